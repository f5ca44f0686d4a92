//! `twinguard bench`'s guard section: decision latency in-process for 1, 100 and 10,000
//! agents × assets, as p50 and p99, in parts: the identity proof (token, Ed25519
//! signature, freshness, nonce), the decision (scope, Cedar evaluation, rate limits,
//! envelope, budget, preconditions, risk tier), the audit append, and their sums.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use audit::{AuditStore, Entry, SqliteStore};
use guard::{Action, AgentRegistry, Decision, Guard, InputTrust, Policy, Proposal, sign_proposal};
use plant_model::Plant;
use plant_sim::DEFAULT_START_MS;
use serde_json::{Value, json};

/// Decisions timed per size.
const DECISIONS: usize = 2_000;

fn percentile(sorted_us: &[f64], p: f64) -> f64 {
    let i = ((sorted_us.len() as f64 - 1.0) * p).round() as usize;
    sorted_us.get(i).copied().unwrap_or(f64::NAN)
}

/// The reference plant with the pump's change limits lifted, so that every timed decision
/// goes the whole way (policy, envelope, budget) to an executed command.
fn plant() -> Plant {
    let mut p = Plant::reference();
    for sp in &mut p.setpoints {
        sp.max_changes_per_hour = u32::MAX;
        sp.max_slew_per_min = None;
        sp.budget = None;
    }
    p
}

pub fn run(dir: &std::path::Path) -> Result<Value> {
    std::fs::create_dir_all(dir)?;
    let plant = Arc::new(plant());
    let mut rows = Vec::new();
    for n in [1usize, 100, 10_000] {
        // n agents, each permitted by its own policy on the pump: n agent × asset pairs.
        let mut text = String::new();
        for i in 0..n {
            text.push_str(&format!(
                "@id(\"a{i}\")\npermit (principal == Twinguard::Agent::\"agent-{i}\", action == Twinguard::Action::\"set_setpoint\", resource == Twinguard::Asset::\"pump\");\n"
            ));
        }
        let t = Instant::now();
        let policy = Policy::parse(&text, "bench", &plant)?;
        let load_s = t.elapsed().as_secs_f64();
        let mut reg = AgentRegistry::default();
        let key = frames::keys::generate()?;
        for i in 0..n {
            reg.register(&format!("agent-{i}"), key.verifying_key());
        }
        let mut guard = Guard::new(plant.clone(), reg, policy)
            .with_limits(guard::GuardLimits {
                agent_actions_per_hour: u32::MAX,
                agent_asset_actions_per_hour: u32::MAX,
                ..Default::default()
            })
            .with_breakers(guard::BreakerLimits {
                actions_per_10_min: u32::MAX,
                ..Default::default()
            });
        let now = DEFAULT_START_MS;
        let tokens: Vec<String> = (0..n.min(DECISIONS))
            .map(|i| {
                guard
                    .agents()
                    .issue_token(&format!("agent-{i}"), format!("{i:064}"), now)
                    .map(|t| t.value)
            })
            .collect::<Result<_, _>>()?;
        let mut store = SqliteStore::open(&dir.join(format!("guard-{n}.db")), key.clone())?;
        let mut trust = InputTrust::default();
        trust.values.insert("tank.level".into(), 1.6);
        let mut times = Vec::with_capacity(DECISIONS);
        let mut proof_times = Vec::with_capacity(DECISIONS);
        let mut decide_times = Vec::with_capacity(DECISIONS);
        let mut audit_times = Vec::with_capacity(DECISIONS);
        let mut in_process_times = Vec::with_capacity(DECISIONS);
        let mut executed = 0usize;
        for k in 0..DECISIONS {
            let i = k % tokens.len();
            let p = Proposal {
                agent: format!("agent-{i}"),
                action: Action::SetSetpoint {
                    setpoint: "pump.speed_sp".into(),
                    value: if k % 2 == 0 { 1550.0 } else { 1600.0 },
                },
                reason: "bench".into(),
                evidence: vec![],
                inputs: vec!["pump.speed".into()],
                created_ms: now,
                nonce: format!("n{k}"),
            };
            let token = tokens.get(i).map(String::as_str).unwrap_or_default();
            let sp = sign_proposal(&p, token, &key);
            let us = |t: Instant| t.elapsed().as_secs_f64() * 1e6;
            let t = Instant::now();
            let authenticated = guard
                .authenticate(&sp, now)
                .map_err(|denied| anyhow::anyhow!("bench: proposal refused: {:?}", denied.1))?;
            let proof = us(t);
            let t1 = Instant::now();
            let (id, decision, rec) = guard.decide_authenticated(authenticated, &[], &trust, now);
            let decide = us(t1);
            let t2 = Instant::now();
            store.append(&[
                Entry::new(now, "proposal", json!({ "proposal_id": id, "proposal": p })),
                Entry::new(now, "decision", json!(rec)),
            ])?;
            let audit = us(t2);
            times.push(us(t));
            proof_times.push(proof);
            decide_times.push(decide);
            audit_times.push(audit);
            in_process_times.push(decide + audit);
            executed += usize::from(matches!(decision, Decision::Execute(_)));
        }
        if executed != DECISIONS {
            anyhow::bail!("bench: {executed} of {DECISIONS} decisions executed at {n} agents");
        }
        let p = |name: &str, v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            (name.to_string(), percentile(v, 0.5), percentile(v, 0.99))
        };
        let parts = [
            p("total", &mut times),
            p("proof", &mut proof_times),
            p("decision", &mut decide_times),
            p("audit", &mut audit_times),
            p("decision_and_audit", &mut in_process_times),
        ];
        eprintln!(
            "bench: guard with {n} agents x assets (policy load {load_s:.2} s), p50/p99 us: {}",
            parts
                .iter()
                .map(|(name, p50, p99)| format!("{name} {p50:.1}/{p99:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut row = serde_json::Map::new();
        row.insert("agents_x_assets".into(), json!(n));
        row.insert("decisions".into(), json!(DECISIONS));
        row.insert("policy_load_s".into(), json!(load_s));
        for (name, p50, p99) in parts {
            row.insert(format!("{name}_p50_us"), json!(p50));
            row.insert(format!("{name}_p99_us"), json!(p99));
        }
        rows.push(Value::Object(row));
    }
    Ok(json!(rows))
}
