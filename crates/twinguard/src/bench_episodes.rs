//! `twinguard bench episodes`: does the twin tell a faulty sensor from a process that
//! moved and from an attack? Seeded runs of the whole loop (`demo`, over MQTT, with the
//! learnt multivariate model on), each with one sensor fault, one process fault, one
//! attack or nothing, injected after the model has learnt; the class of the first alarm
//! episode that follows is scored against what was injected.
//!
//! What counts (per run):
//! - a sensor fault should read `sensor_fault`; a process fault `process_upset`. Either
//!   read `unknown` or `suspected_attack` is safe (a human judges) but unresolved.
//! - a sensor fault read as `process_upset` is the costly error (an anomaly of the data
//!   taken for the process: lines are stopped for it); a process fault read as
//!   `sensor_fault` dismisses a real failure as a sensor.
//! - an attack is handled if its frames are refused at ingest or its episodes go to a
//!   human (`unknown`, `suspected_attack`); an episode on it that an agent may act on
//!   alone (`sensor_fault`, `process_upset`) is wrong.
//! - a normal run should raise nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::attack::Attack;
use crate::demo::{DemoArgs, Transport};

/// What a scenario injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Truth {
    SensorFault,
    ProcessFault,
    Attack,
    Normal,
}

impl Truth {
    const ALL: [Truth; 4] = [
        Truth::SensorFault,
        Truth::ProcessFault,
        Truth::Attack,
        Truth::Normal,
    ];

    fn label(self) -> &'static str {
        match self {
            Truth::SensorFault => "sensor fault",
            Truth::ProcessFault => "process fault",
            Truth::Attack => "attack",
            Truth::Normal => "nothing",
        }
    }
}

/// How a run's first episode after the onset read (or what else happened).
pub const VERDICTS: [&str; 6] = [
    "sensor_fault",
    "process_upset",
    "unknown",
    "suspected_attack",
    "refused_at_ingest",
    "nothing_seen",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The class that was injected.
    Correct,
    /// Sent to a human without a class: nothing acts on it alone.
    Safe,
    /// A class that lets the wrong thing happen.
    Wrong,
    /// Nothing raised.
    Missed,
}

#[derive(Debug, Clone)]
struct Scenario {
    name: &'static str,
    truth: Truth,
    fault: Option<&'static str>,
    attack: Option<Attack>,
    /// Simulated seconds from the start to the fault or attack.
    onset_s: u64,
}

/// Faults start once the model has learnt (2 h) and the plant has settled.
const FAULT_ONSET_S: u64 = 4 * 3600;

fn scenarios() -> Vec<Scenario> {
    let fault = |name, truth, spec| Scenario {
        name,
        truth,
        fault: Some(spec),
        attack: None,
        onset_s: FAULT_ONSET_S,
    };
    // The attacks' own schedules (attack.rs, demo.rs): frames from 30 min, the level
    // ramp and the delayed link from 1 h.
    let attack = |name, a, onset_s| Scenario {
        name,
        truth: Truth::Attack,
        fault: None,
        attack: Some(a),
        onset_s,
    };
    use Truth::{ProcessFault as P, SensorFault as S};
    vec![
        fault(
            "drift-pressure",
            S,
            "drift:pump.discharge_pressure@14400=0.5",
        ),
        fault("drift-product-temp", S, "drift:past.product_temp@14400=1"),
        fault("drift-vibration", S, "drift:pump.vibration@14400=1"),
        fault("bias-level", S, "bias:tank.level@14400=0.2"),
        fault("bias-bearing-temp", S, "bias:pump.bearing_temp@14400=5"),
        fault("stuck-flow", S, "stuck:pump.flow@14400"),
        fault("stuck-level", S, "stuck:tank.level@14400"),
        fault("spike-product-temp", S, "spike:past.product_temp@14400=5"),
        fault("spike-pressure", S, "spike:pump.discharge_pressure@14400=4"),
        fault("bearing-wear", P, "wear:pump@14400=30"),
        fault("fouling", P, "fouling:past@14400=0.05"),
        fault("steam-valve-stuck", P, "stick:past.steam_valve@14400"),
        fault("inlet-valve-stuck", P, "stick:tank.inlet_valve@14400"),
        attack("fdi-level", Attack::FdiLevel, 3600),
        attack("forged-frames", Attack::ForgedFrames, 1800),
        attack("replay", Attack::Replay, 1800),
        attack("delayed-frames", Attack::DelayedFrames, 3600),
        attack("retired-key", Attack::RetiredKey, 1800),
        Scenario {
            name: "normal",
            truth: Truth::Normal,
            fault: None,
            attack: None,
            onset_s: FAULT_ONSET_S,
        },
    ]
}

/// The first episode raised after the onset.
#[derive(Debug, Clone, Serialize)]
pub struct FirstEpisode {
    pub kind: String,
    pub signals: Vec<String>,
    pub minutes_after_onset: f64,
    /// Its class when raised, and its latest.
    pub first_class: String,
    pub class: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub scenario: &'static str,
    pub truth: Truth,
    pub seed: u64,
    pub onset_s: u64,
    /// Episodes raised before the onset (false alarms).
    pub episodes_before_onset: usize,
    /// Their kinds and signals.
    pub before_onset: Vec<String>,
    pub first: Option<FirstEpisode>,
    /// Latest classes of every episode raised after the onset.
    pub classes_after_onset: BTreeMap<String, usize>,
    pub frames_refused: u64,
    pub line_stops: u64,
    pub verdict: &'static str,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Serialize)]
pub struct EpisodesResult {
    pub seeds: u64,
    pub hours: f64,
    /// Truth -> verdict -> runs.
    pub confusion: BTreeMap<Truth, BTreeMap<&'static str, usize>>,
    /// Truth -> outcome -> runs.
    pub outcomes: BTreeMap<Truth, BTreeMap<Outcome, usize>>,
    /// Episodes an agent may act on alone (`sensor_fault`, `process_upset`) raised after
    /// an attack began: each one a way in.
    pub actionable_episodes_in_attacks: usize,
    pub line_stops: u64,
    pub runs: Vec<RunResult>,
}

fn verdict(first: Option<&FirstEpisode>, frames_refused: u64) -> &'static str {
    match first {
        Some(f) => VERDICTS
            .iter()
            .copied()
            .find(|v| *v == f.class)
            .unwrap_or("unknown"),
        None if frames_refused > 0 => "refused_at_ingest",
        None => "nothing_seen",
    }
}

fn outcome(truth: Truth, verdict: &str) -> Outcome {
    match (truth, verdict) {
        (Truth::SensorFault, "sensor_fault") | (Truth::ProcessFault, "process_upset") => {
            Outcome::Correct
        }
        (Truth::SensorFault | Truth::ProcessFault, "unknown" | "suspected_attack") => Outcome::Safe,
        (Truth::SensorFault | Truth::ProcessFault, "nothing_seen" | "refused_at_ingest") => {
            Outcome::Missed
        }
        (Truth::Attack, "unknown" | "suspected_attack" | "refused_at_ingest") => Outcome::Correct,
        (Truth::Attack, "nothing_seen") => Outcome::Missed,
        (Truth::Normal, "nothing_seen") => Outcome::Correct,
        _ => Outcome::Wrong,
    }
}

/// Reads one demo report.
fn judge(s: &Scenario, seed: u64, report: &Value) -> Result<RunResult> {
    let start = report["start_ms"]
        .as_i64()
        .context("the demo report has no start_ms")?;
    let onset_ms = start + s.onset_s as i64 * 1000;
    let episodes = report["episodes"]
        .as_array()
        .context("the demo report has no episodes")?;
    let total: u64 = report["detections"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
    if total > episodes.len() as u64 {
        anyhow::bail!(
            "scenario {} seed {seed}: {total} episodes, more than the report lists ({}): the first ones are gone",
            s.name,
            episodes.len()
        );
    }
    let raised = |e: &Value| e["raised_ms"].as_i64().unwrap_or(i64::MIN);
    let before: Vec<String> = episodes
        .iter()
        .filter(|e| raised(e) < onset_ms)
        .map(|e| format!("{} on {} ({})", e["kind"], e["signals"], e["class"]))
        .collect();
    let after: Vec<&Value> = episodes.iter().filter(|e| raised(e) >= onset_ms).collect();
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    let first = after.first().map(|e| FirstEpisode {
        kind: text(&e["kind"]),
        signals: e["signals"]
            .as_array()
            .map(|a| a.iter().map(text).collect())
            .unwrap_or_default(),
        minutes_after_onset: (raised(e) - onset_ms) as f64 / 60_000.0,
        first_class: text(&e["first_class"]),
        class: text(&e["class"]),
    });
    let mut classes_after_onset = BTreeMap::new();
    for e in &after {
        *classes_after_onset.entry(text(&e["class"])).or_insert(0) += 1;
    }
    let frames_refused = report
        .pointer("/frames/rejected")
        .and_then(Value::as_object)
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
    let verdict = verdict(first.as_ref(), frames_refused);
    Ok(RunResult {
        scenario: s.name,
        truth: s.truth,
        seed,
        onset_s: s.onset_s,
        episodes_before_onset: before.len(),
        before_onset: before,
        first,
        classes_after_onset,
        frames_refused,
        line_stops: report["line_stops"].as_u64().unwrap_or(0),
        verdict,
        outcome: outcome(s.truth, verdict),
    })
}

/// Runs every scenario (or those named in `only`) for seeds 1 to `seeds`.
pub async fn bench(
    seeds: u64,
    hours: f64,
    only: &[String],
    data_dir: &Path,
) -> Result<EpisodesResult> {
    let all = scenarios();
    let names: Vec<&str> = all.iter().map(|s| s.name).collect();
    if let Some(unknown) = only.iter().find(|o| !names.contains(&o.as_str())) {
        anyhow::bail!(
            "bench episodes: no scenario {unknown:?} (scenarios: {})",
            names.join(", ")
        );
    }
    let chosen: Vec<Scenario> = all
        .into_iter()
        .filter(|s| only.is_empty() || only.iter().any(|o| o == s.name))
        .collect();
    if let Some(late) = chosen.iter().find(|s| s.onset_s as f64 >= hours * 3600.0) {
        anyhow::bail!(
            "bench episodes: scenario {} starts at {} h, after the run's {hours} h",
            late.name,
            s_to_h(late.onset_s)
        );
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    // The default configuration, with the learnt multivariate model on.
    let config = data_dir.join("twinguard.toml");
    let text =
        twinguard_config::DEFAULT_CONFIG.replace("multivariate = false", "multivariate = true");
    if !text.contains("multivariate = true") {
        anyhow::bail!("bench episodes: the default configuration has no `multivariate` setting");
    }
    std::fs::write(&config, text).with_context(|| format!("cannot write {}", config.display()))?;
    let total = chosen.len() as u64 * seeds;
    let mut runs = Vec::new();
    for seed in 1..=seeds {
        for s in &chosen {
            eprint!(
                "\repisodes: run {}/{total}: seed {seed} {:<20}",
                runs.len() + 1,
                s.name
            );
            let dir = data_dir.join(format!("seed-{seed}")).join(s.name);
            // A fresh data directory: keys, registry and audit log of this run only.
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("cannot clear {}", dir.display()))?;
            }
            let report = crate::demo::run(DemoArgs {
                transport: Transport::Mqtt,
                config: Some(config.clone()),
                legacy_devices: vec![],
                body: Default::default(),
                hours,
                speed: 0.0,
                attack: s.attack,
                seed,
                data_dir: dir,
                plant_file: None,
                faults: s.fault.map(str::to_string).into_iter().collect(),
                broker: None,
                api_port: 0,
                quiet: true,
                agents: true,
                vary_conditions: false,
                baseline: None,
            })
            .await
            .with_context(|| format!("scenario {} seed {seed}", s.name))?;
            runs.push(judge(s, seed, &report)?);
        }
    }
    eprintln!();
    let mut confusion: BTreeMap<Truth, BTreeMap<&'static str, usize>> = BTreeMap::new();
    let mut outcomes: BTreeMap<Truth, BTreeMap<Outcome, usize>> = BTreeMap::new();
    for r in &runs {
        *confusion
            .entry(r.truth)
            .or_default()
            .entry(r.verdict)
            .or_default() += 1;
        *outcomes
            .entry(r.truth)
            .or_default()
            .entry(r.outcome)
            .or_default() += 1;
    }
    let actionable_episodes_in_attacks = runs
        .iter()
        .filter(|r| r.truth == Truth::Attack)
        .map(|r| {
            ["sensor_fault", "process_upset"]
                .iter()
                .filter_map(|c| r.classes_after_onset.get(*c))
                .sum::<usize>()
        })
        .sum();
    Ok(EpisodesResult {
        seeds,
        hours,
        confusion,
        outcomes,
        actionable_episodes_in_attacks,
        line_stops: runs.iter().map(|r| r.line_stops).sum(),
        runs,
    })
}

fn s_to_h(s: u64) -> f64 {
    s as f64 / 3600.0
}

pub fn table(r: &EpisodesResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Alarm episodes on the reference plant: {} seeds, {} h runs, faults from {} h (after the model learnt), attacks on their own schedule\n",
        r.seeds,
        r.hours,
        s_to_h(FAULT_ONSET_S)
    );
    let _ = writeln!(
        out,
        "{:<22} {:>7} {:>10} {:>18} {:>12} {:>8}  first episode after the onset",
        "scenario", "seed", "verdict", "outcome", "refused", "before"
    );
    for run in &r.runs {
        let first = run.first.as_ref().map_or(String::from("-"), |f| {
            format!(
                "{} on {} after {:.0} min ({} when raised)",
                f.kind,
                f.signals.join(", "),
                f.minutes_after_onset,
                f.first_class
            )
        });
        let _ = writeln!(
            out,
            "{:<22} {:>7} {:>10} {:>18} {:>12} {:>8}  {first}",
            run.scenario,
            run.seed,
            short(run.verdict),
            format!("{:?}", run.outcome).to_lowercase(),
            run.frames_refused,
            run.episodes_before_onset,
        );
    }
    let _ = writeln!(
        out,
        "\nFirst episode's class by what was injected (runs):\n{:<14} {}",
        "",
        VERDICTS
            .iter()
            .map(|v| format!("{:>10}", short(v)))
            .collect::<String>()
    );
    for t in Truth::ALL {
        let Some(row) = r.confusion.get(&t) else {
            continue;
        };
        let _ = writeln!(
            out,
            "{:<14} {}",
            t.label(),
            VERDICTS
                .iter()
                .map(|v| format!("{:>10}", row.get(v).copied().unwrap_or(0)))
                .collect::<String>()
        );
    }
    let _ = writeln!(out, "\nOutcomes:");
    for (t, o) in &r.outcomes {
        let n: usize = o.values().sum();
        let _ = writeln!(
            out,
            "{:<14} correct {}/{n}, safe (to a human) {}, wrong {}, missed {}",
            t.label(),
            o.get(&Outcome::Correct).copied().unwrap_or(0),
            o.get(&Outcome::Safe).copied().unwrap_or(0),
            o.get(&Outcome::Wrong).copied().unwrap_or(0),
            o.get(&Outcome::Missed).copied().unwrap_or(0),
        );
    }
    let _ = writeln!(
        out,
        "\nEpisodes an agent could act on alone during attacks: {}; line stops in all runs: {}",
        r.actionable_episodes_in_attacks, r.line_stops
    );
    out
}

/// Column heads that fit the table.
fn short(verdict: &str) -> &str {
    match verdict {
        "sensor_fault" => "sensor",
        "process_upset" => "process",
        "suspected_attack" => "attack",
        "refused_at_ingest" => "refused",
        "nothing_seen" => "nothing",
        other => other,
    }
}

/// The confusion matrix as an SVG: what was injected (rows) against how the first
/// episode after it read (columns), each cell shaded by its share of the row, green where
/// the reading is right, amber where a human decides, red where it lets the wrong thing
/// happen.
pub fn svg(r: &EpisodesResult) -> String {
    let (left, top, cw, ch) = (120.0, 70.0, 100.0, 56.0);
    let w = left + cw * VERDICTS.len() as f64 + 20.0;
    let h = top + ch * Truth::ALL.len() as f64 + 60.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n<text x=\"10\" y=\"20\" font-size=\"14\">First alarm episode after a fault or attack: its class (columns) by what was injected (rows)</text>\n<text x=\"10\" y=\"38\">{} seeds, {} h runs of the reference plant; cell: runs (share of the row)</text>\n",
        r.seeds, r.hours
    );
    for (j, v) in VERDICTS.iter().enumerate() {
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            left + cw * (j as f64 + 0.5),
            top - 8.0,
            short(v)
        );
    }
    for (i, t) in Truth::ALL.iter().enumerate() {
        let y = top + ch * i as f64;
        let _ = writeln!(
            out,
            "<text x=\"10\" y=\"{:.1}\">{}</text>",
            y + ch / 2.0 + 4.0,
            t.label()
        );
        let row = r.confusion.get(t);
        let n: usize = row.map_or(0, |r| r.values().sum());
        for (j, v) in VERDICTS.iter().enumerate() {
            let k = row.and_then(|r| r.get(v)).copied().unwrap_or(0);
            let share = if n > 0 { k as f64 / n as f64 } else { 0.0 };
            let colour = match outcome(*t, v) {
                Outcome::Correct => "46,160,67",
                Outcome::Safe => "230,160,30",
                Outcome::Wrong | Outcome::Missed => "210,50,40",
            };
            let x = left + cw * j as f64;
            let _ = writeln!(
                out,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{cw}\" height=\"{ch}\" fill=\"rgb({colour})\" fill-opacity=\"{:.2}\" stroke=\"#999\"/>",
                0.08 + 0.8 * share
            );
            if k > 0 {
                let _ = writeln!(
                    out,
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{k} ({:.0} %)</text>",
                    x + cw / 2.0,
                    y + ch / 2.0 + 4.0,
                    share * 100.0
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "<text x=\"10\" y=\"{:.1}\">green: right (the injected class; an attack refused or sent to a human); amber: a fault sent to a human unclassified; red: wrong or missed</text>\n</svg>",
        h - 20.0
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_follow_what_each_reading_lets_happen() {
        assert_eq!(outcome(Truth::SensorFault, "process_upset"), Outcome::Wrong);
        assert_eq!(outcome(Truth::SensorFault, "unknown"), Outcome::Safe);
        assert_eq!(outcome(Truth::ProcessFault, "sensor_fault"), Outcome::Wrong);
        assert_eq!(
            outcome(Truth::Attack, "refused_at_ingest"),
            Outcome::Correct
        );
        assert_eq!(outcome(Truth::Attack, "sensor_fault"), Outcome::Wrong);
        assert_eq!(outcome(Truth::Normal, "unknown"), Outcome::Wrong);
        assert_eq!(outcome(Truth::Normal, "nothing_seen"), Outcome::Correct);
        assert_eq!(
            outcome(Truth::ProcessFault, "nothing_seen"),
            Outcome::Missed
        );
    }
}
