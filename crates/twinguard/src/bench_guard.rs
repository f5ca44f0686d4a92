//! `twinguard bench`'s guard section: decision latency in-process for 1, 100 and 10,000
//! agents × assets, as p50 and p99, in parts: the identity proof (token, Ed25519
//! signature, freshness, nonce), the decision (scope, Cedar evaluation, rate limits,
//! envelope, budget, preconditions, risk tier), the audit append, and their sums. The
//! append is timed both ways: through the append journal, as a running twinguard makes
//! it, and as one SQLite transaction. In the same loop, a fixed computation (SHA-256 of
//! 8 KiB) is timed too: the machine's own noise, against which a p99 is read. Then the
//! journal's write alone, in the ways a journal can be kept ([`journal_writes`]).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use audit::{AuditStore, SqliteStore};
use guard::{Action, AgentRegistry, Decision, Guard, InputTrust, Policy, Proposal, sign_proposal};
use plant_model::Plant;
use plant_sim::DEFAULT_START_MS;
use serde_json::{Value, json};
use sha2::Digest;

/// Decisions timed per size (the p99 is the 100th slowest).
const DECISIONS: usize = 10_000;

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
        // The audit append as a running twinguard makes it (through the append journal)
        // and as one SQLite transaction (what a command beside it does), on fresh guards.
        for journal in [true, false] {
            let policy = policy.clone();
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
            let path = if journal { "journal" } else { "sqlite" };
            let mut store =
                SqliteStore::open(&dir.join(format!("guard-{n}-{path}.db")), key.clone())?;
            if journal {
                store = store.with_append_journal()?;
            }
            let mut trust = InputTrust::default();
            trust.values.insert("tank.level".into(), 1.6);
            let mut times = Vec::with_capacity(DECISIONS);
            let mut proof_times = Vec::with_capacity(DECISIONS);
            let mut decide_times = Vec::with_capacity(DECISIONS);
            let mut audit_times = Vec::with_capacity(DECISIONS);
            let mut in_process_times = Vec::with_capacity(DECISIONS);
            let mut fixed_times = Vec::with_capacity(DECISIONS);
            let fixed_input = vec![7u8; 8 * 1024];
            let mut fixed_sink = 0u8;
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
                let (id, decision, rec) =
                    guard.decide_authenticated(authenticated, &[], &trust, now);
                let decide = us(t1);
                let t2 = Instant::now();
                store.append(&crate::core::decision_entries(now, id, &p, &rec))?;
                let audit = us(t2);
                let total = us(t);
                let t3 = Instant::now();
                let digest = sha2::Sha256::digest(std::hint::black_box(&fixed_input));
                fixed_sink ^= digest.first().copied().unwrap_or_default();
                fixed_times.push(us(t3));
                times.push(total);
                proof_times.push(proof);
                decide_times.push(decide);
                audit_times.push(audit);
                in_process_times.push(decide + audit);
                executed += usize::from(matches!(decision, Decision::Execute(_)));
            }
            if executed != DECISIONS {
                anyhow::bail!("bench: {executed} of {DECISIONS} decisions executed at {n} agents");
            }
            std::hint::black_box(fixed_sink);
            let p = |name: &str, v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                (
                    name.to_string(),
                    percentile(v, 0.5),
                    percentile(v, 0.99),
                    percentile(v, 0.999),
                )
            };
            let parts = [
                p("total", &mut times),
                p("proof", &mut proof_times),
                p("decision", &mut decide_times),
                p("audit", &mut audit_times),
                p("decision_and_audit", &mut in_process_times),
                p("fixed_sha256_8k", &mut fixed_times),
            ];
            eprintln!(
                "bench: guard with {n} agents x assets, audit append through {path} (policy load {load_s:.2} s), p50/p99/p99.9 us: {}",
                parts
                    .iter()
                    .map(|(name, p50, p99, p999)| format!("{name} {p50:.1}/{p99:.1}/{p999:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut row = serde_json::Map::new();
            row.insert("agents_x_assets".into(), json!(n));
            row.insert("audit_append".into(), json!(path));
            row.insert("decisions".into(), json!(DECISIONS));
            row.insert("policy_load_s".into(), json!(load_s));
            for (name, p50, p99, p999) in parts {
                row.insert(format!("{name}_p50_us"), json!(p50));
                row.insert(format!("{name}_p99_us"), json!(p99));
                row.insert(format!("{name}_p999_us"), json!(p999));
            }
            rows.push(Value::Object(row));
        }
    }
    Ok(json!(rows))
}

/// The journal's `write` alone, as a guard decision makes it (a 2,000-byte append after
/// 60 µs of other work), with the journal kept in three ways:
/// - `truncated`: written at its end and truncated once it reaches 1 MiB (how the journal
///   was kept until 2026-12-07);
/// - `preallocated_at_once`: 2 MiB of zeros written in one call, appends written over
///   them, and zeros written back over them at 1 MiB;
/// - `preallocated_by_page`: the same with the zeros first written a page at a time (how
///   the journal is kept now).
pub fn journal_writes(dir: &std::path::Path) -> Result<Value> {
    use std::os::unix::fs::FileExt;
    const WRITES: usize = 20_000;
    const LINE: usize = 2_000;
    const EMPTY_AT: u64 = 1 << 20;
    std::fs::create_dir_all(dir)?;
    let line = {
        let mut l = vec![b'x'; LINE];
        if let Some(last) = l.last_mut() {
            *last = b'\n';
        }
        l
    };
    let zeros = vec![0u8; 2 * EMPTY_AT as usize];
    let mut rows = Vec::new();
    for way in ["truncated", "preallocated_at_once", "preallocated_by_page"] {
        let path = dir.join(format!("journal-{way}"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        match way {
            "preallocated_at_once" => file.write_all_at(&zeros, 0)?,
            "preallocated_by_page" => {
                for (i, page) in zeros.chunks(4096).enumerate() {
                    file.write_all_at(page, (i * 4096) as u64)?;
                }
            }
            _ => {}
        }
        let mut times = Vec::with_capacity(WRITES);
        let mut at = 0u64;
        for _ in 0..WRITES {
            let work = Instant::now();
            while work.elapsed().as_micros() < 60 {
                std::hint::spin_loop();
            }
            let t = Instant::now();
            file.write_all_at(&line, at)?;
            times.push(t.elapsed().as_secs_f64() * 1e6);
            at += LINE as u64;
            if at >= EMPTY_AT {
                if way == "truncated" {
                    file.set_len(0)?;
                } else {
                    file.write_all_at(zeros.get(..at as usize).unwrap_or(&zeros), 0)?;
                }
                at = 0;
            }
        }
        drop(file);
        let _ = std::fs::remove_file(&path);
        times.sort_by(f64::total_cmp);
        let (p50, p99, p999) = (
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            percentile(&times, 0.999),
        );
        eprintln!(
            "bench: the journal's write, {way}, p50/p99/p99.9 us: {p50:.1}/{p99:.1}/{p999:.1}"
        );
        rows.push(json!({
            "journal": way,
            "writes": WRITES,
            "bytes": LINE,
            "p50_us": p50,
            "p99_us": p99,
            "p999_us": p999,
        }));
    }
    Ok(json!(rows))
}

/// Requests timed over HTTP.
const HTTP_REQUESTS: usize = 1_000;

/// A keep-alive HTTP/1.1 exchange on `stream`: the status and the body.
fn exchange(
    stream: &mut std::net::TcpStream,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String)> {
    use std::io::{BufRead, BufReader, Read, Write};
    // One write: the request in one segment.
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut buf = vec![0u8; length];
    reader.read_exact(&mut buf)?;
    Ok((status, String::from_utf8_lossy(&buf).into_owned()))
}

/// The external path: `twinguard demo` runs as its own process with an external agent
/// registered; this process acts as that agent over loopback HTTP (one keep-alive
/// connection), as docs/agent-api.md describes, and times each signed proposal from
/// request to answer: HTTP, the proof's verification, the decision and the audit append.
/// Each proposal is a pasteuriser temperature change, which the policy permits: the first
/// few execute, then its change limits deny the rest (rate, budget), so every request goes
/// through policy, envelope and budget to a recorded decision, and nothing piles up.
pub fn http(dir: &std::path::Path) -> Result<Value> {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    std::fs::create_dir_all(dir)?;
    let exe = std::env::current_exe()?;
    let data = dir.join("data");
    let key_file = dir.join("bench-agent.key");
    let status = Command::new(&exe)
        .args(["agent", "add", "bench-agent", "--generate-key"])
        .arg(&key_file)
        .args(["--kinds", "set_setpoint", "--assets", "past", "--data-dir"])
        .arg(&data)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        anyhow::bail!("bench: cannot register the bench agent");
    }
    let policy = format!(
        "{}\n@id(\"bench-agent\")\npermit (principal == Twinguard::Agent::\"bench-agent\", action == Twinguard::Action::\"set_setpoint\", resource == Twinguard::Asset::\"past\");\n",
        guard::DEFAULT_POLICY
    );
    std::fs::write(dir.join("policy.cedar"), policy)?;
    let config = twinguard_config::DEFAULT_CONFIG
        .replace(
            "# policy_file = \"policy.cedar\"",
            "policy_file = \"policy.cedar\"",
        )
        .replace(
            "agent_actions_per_hour = 60",
            "agent_actions_per_hour = 1000000",
        )
        .replace(
            "agent_asset_actions_per_hour = 20",
            "agent_asset_actions_per_hour = 1000000",
        );
    std::fs::write(dir.join("twinguard.toml"), config)?;
    let mut child = Command::new(&exe)
        .args([
            "demo", "--port", "0", "--json", "--speed", "1", "--hours", "4", "--config",
        ])
        .arg(dir.join("twinguard.toml"))
        .arg("--data-dir")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let result = (|| -> Result<Value> {
        let stderr = child
            .stderr
            .take()
            .context("bench: no stderr from the demo")?;
        let mut lines = std::io::BufReader::new(stderr).lines();
        let port: u16 = loop {
            let line = lines
                .next()
                .context("bench: the demo ended before serving")??;
            if let Some(rest) = line.split("live twin at http://127.0.0.1:").nth(1) {
                break rest
                    .split('/')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .context("bench: no port")?;
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        let key = frames::keys::load(&key_file)?;
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        let now = |stream: &mut std::net::TcpStream| -> Result<i64> {
            for _ in 0..100 {
                let (s, body) = exchange(stream, "GET", "/healthz", "")?;
                if s == 200 {
                    let v: Value = serde_json::from_str(&body)?;
                    return v
                        .get("now_ms")
                        .and_then(Value::as_i64)
                        .context("bench: no now_ms");
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            anyhow::bail!("bench: the demo did not become healthy")
        };
        let t0 = now(&mut stream)?;
        let request = guard::sign_token_request("bench-agent", t0, "bench-token-0", &key);
        let (s, body) = exchange(
            &mut stream,
            "POST",
            "/api/v1/agent/token",
            &serde_json::to_string(&request)?,
        )?;
        if s != 200 {
            anyhow::bail!("bench: token refused ({s}): {body}");
        }
        let answer: Value = serde_json::from_str(&body)?;
        let token = answer
            .get("token")
            .and_then(Value::as_str)
            .context("bench: no token")?
            .to_string();
        let mut times = Vec::with_capacity(HTTP_REQUESTS);
        let mut created = t0;
        for k in 0..HTTP_REQUESTS {
            if k % 100 == 0 {
                created = now(&mut stream)?;
            }
            let p = Proposal {
                agent: "bench-agent".into(),
                action: Action::SetSetpoint {
                    setpoint: "past.temp_sp".into(),
                    value: if k % 2 == 0 { 75.5 } else { 75.0 },
                },
                reason: "bench".into(),
                evidence: vec![],
                inputs: vec![],
                created_ms: created,
                nonce: format!("bench-{k}"),
            };
            let sp = sign_proposal(&p, &token, &key);
            let body = json!({ "body": sp.body, "token": sp.token, "signature": sp.signature })
                .to_string();
            let t = Instant::now();
            let (s, answer) = exchange(&mut stream, "POST", "/api/v1/agent/proposals", &body)?;
            times.push(t.elapsed().as_secs_f64() * 1e6);
            if s != 200 || !(answer.contains("\"executed\"") || answer.contains("\"denied\"")) {
                anyhow::bail!("bench: proposal {k} answered {s}: {answer}");
            }
        }
        // The HTTP round trip alone, for comparison: the health check answers from the
        // API's last snapshot without asking the core.
        let mut health = Vec::with_capacity(HTTP_REQUESTS);
        for _ in 0..HTTP_REQUESTS {
            let t = Instant::now();
            exchange(&mut stream, "GET", "/healthz", "")?;
            health.push(t.elapsed().as_secs_f64() * 1e6);
        }
        times.sort_by(f64::total_cmp);
        health.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
        let (h50, h99) = (percentile(&health, 0.5), percentile(&health, 0.99));
        eprintln!(
            "bench: external agent over HTTP, {HTTP_REQUESTS} signed proposals: p50 {p50:.0} us, p99 {p99:.0} us (health check alone: p50 {h50:.0} us, p99 {h99:.0} us)"
        );
        Ok(json!({
            "requests": HTTP_REQUESTS,
            "p50_us": p50,
            "p99_us": p99,
            "health_check_p50_us": h50,
            "health_check_p99_us": h99,
        }))
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}
