//! `twinguard bench lookahead`: what the optimiser's look-ahead costs. For plants in a
//! few seeded conditions, the optimiser's observation of the twin (five-minute means of
//! every signal) is taken from the simulated plant, then timed: one candidate simulated an
//! hour ahead, and a whole proposal (the model started from the observation, every
//! candidate simulated, the best chosen).

use std::time::Instant;

use anyhow::{Context, Result};
use plant_model::Plant;
use plant_sim::{Conditions, DEFAULT_START_MS, Observed, PlantCommand, Sim};
use serde::Serialize;
use std::sync::Arc;

#[derive(Debug, Serialize)]
pub struct LookaheadBench {
    pub horizon_s: u64,
    pub reps: usize,
    pub rows: Vec<Row>,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub seed: u64,
    pub conditions: &'static str,
    pub candidates: usize,
    /// Median time to simulate one candidate over the horizon, ms.
    pub candidate_ms: f64,
    /// Median time of a whole look-ahead (start the model, every candidate, choose), ms.
    pub proposal_ms: f64,
    /// The setpoint changes it recommended.
    pub changes: Vec<(String, f64)>,
}

/// What the optimiser would observe of `sim` after `hours`: five-minute means.
fn observe(plant: &Plant, sim: &mut Sim, hours: f64) -> Observed {
    for _ in 0..((hours * 3600.0) as u64).saturating_sub(300) {
        sim.step();
    }
    let ticks: Vec<plant_sim::Tick> = (0..300).map(|_| sim.step()).collect();
    let mut observed = Observed::means(plant, &ticks);
    observed.setpoints = ["tank.level_sp", "pump.speed_sp", "past.temp_sp"]
        .iter()
        .filter_map(|id| Some((id.to_string(), sim.setpoint(id)?)))
        .collect();
    observed
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub fn run(reps: usize) -> Result<LookaheadBench> {
    let plant = Arc::new(Plant::reference());
    let key = frames::keys::generate().context("cannot make the bench agent's key")?;
    let optimiser = agents::Optimiser::new(agents::Identity::new("bench", key), plant.clone());
    let mut rows = Vec::new();
    for (seed, varied) in [(1, false), (2, true), (3, true), (4, true)] {
        let conditions = if varied {
            Conditions::varied(seed, 24.0)
        } else {
            Conditions::default()
        };
        let mut sim = Sim::with_conditions(&plant, seed, DEFAULT_START_MS, conditions)?;
        let observed = observe(&plant, &mut sim, 3.0);
        eprint!("\rlookahead: seed {seed}   ");
        let mut candidate = Vec::with_capacity(reps);
        let mut proposal = Vec::with_capacity(reps);
        let mut last = None;
        for _ in 0..reps {
            let mut model = Sim::lookahead(&plant, &observed)?;
            model.apply(&PlantCommand::SetSetpoint {
                setpoint: "pump.speed_sp".into(),
                value: 1500.0,
            })?;
            let t = Instant::now();
            std::hint::black_box(model.forecast(optimiser.horizon_s));
            candidate.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let look = optimiser.look_ahead(&observed, 0)?;
            proposal.push(t.elapsed().as_secs_f64() * 1e3);
            last = Some(look);
        }
        let look = last.context("bench lookahead: --reps must be at least 1")?;
        rows.push(Row {
            seed,
            conditions: if varied { "varied" } else { "reference" },
            candidates: look.candidates.len(),
            candidate_ms: median(candidate),
            proposal_ms: median(proposal),
            changes: look
                .changes(optimiser.min_gain)
                .into_iter()
                .map(|(id, v)| (id.to_string(), v))
                .collect(),
        });
    }
    eprintln!();
    Ok(LookaheadBench {
        horizon_s: optimiser.horizon_s,
        reps,
        rows,
    })
}

pub fn table(r: &LookaheadBench) -> String {
    let mut s = format!(
        "The optimiser's look-ahead, {} simulated s per candidate, median of {} runs\n\n seed  conditions  candidates  one candidate  whole proposal  recommends\n",
        r.horizon_s, r.reps
    );
    for row in &r.rows {
        let changes: Vec<String> = row
            .changes
            .iter()
            .map(|(id, v)| format!("{id} {v}"))
            .collect();
        s.push_str(&format!(
            "{:>5}  {:<10}  {:>10}  {:>10.2} ms  {:>11.2} ms  {}\n",
            row.seed,
            row.conditions,
            row.candidates,
            row.candidate_ms,
            row.proposal_ms,
            if changes.is_empty() {
                "hold".to_string()
            } else {
                changes.join(", ")
            }
        ));
    }
    s
}
