//! `twinguard bench reroute`: the scheduler agent on a site of two filling lines sharing
//! a stream of orders with due dates (`plant_sim::site`), against the same seeded site
//! with no rerouting (orders stay on the line the order system gave them; a failed pump
//! is repaired when it has failed).
//!
//! The scheduler reads each line's measurements (ten-minute means of pump vibration,
//! pump speed and filler rate) and the order book, and proposes; each line has its own
//! guard (its own policy, limits and records: the default policy and the site's,
//! `guard::SITE_POLICY`), which decides every proposal. Moves of
//! orders are automatic under the default policy; maintenance needs one approval, which a
//! simulated approver gives a fixed delay after the proposal (`APPROVAL_DELAY_S`).
//! Every proposal, decision, approval and executed command goes to the run's audit log
//! before the site acts on it (a data directory per run with an agent: `twinguard audit
//! verify --data-dir DIR/seed-N/MODE` checks it).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use agents::{LineStatus, QueuedJob, SCHEDULER, Scheduler};
use anyhow::{Context, Result};
use audit::SqliteStore;
use audit::{AuditStore, Entry};
use guard::{
    AgentRegistry, DEFAULT_POLICY, Decision, Guard, Human, InputTrust, Policy, SITE_POLICY,
};
use plant_model::Plant;
use plant_sim::DEFAULT_START_MS;
use plant_sim::site::{self, Site, SiteKpis, SiteOptions};
use serde::Serialize;
use serde_json::json;

use crate::datadir::DataDir;

/// Seconds from a maintenance proposal until the simulated approver approves it.
pub const APPROVAL_DELAY_S: u64 = 15 * 60;
/// The site's load: orders ask for this share of the lines' nominal capacity.
pub const LOAD: f64 = 0.85;

/// One seeded site run.
#[derive(Debug, Clone, Serialize)]
pub struct SiteRun {
    pub kpis: SiteKpis,
    /// Proposals the scheduler made, and what the guards did with them.
    pub proposals: usize,
    pub executed: usize,
    pub approved: usize,
    pub denied: usize,
    /// Every decision, in words: time (h), line, outcome, the proposal's reason.
    pub log: Vec<String>,
    /// Records in the run's audit log (none without an agent).
    pub audit_records: u64,
}

/// What runs the site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The scheduler: maintenance windows and rerouting.
    Scheduler,
    /// The scheduler's maintenance windows, no rerouting (what rerouting adds is the
    /// difference to [`Mode::Scheduler`]).
    MaintenanceOnly,
    /// The scheduler's rerouting, no maintenance windows: the pumps run until they fail.
    RerouteOnly,
    /// No agent: orders stay where the order system put them; failed pumps are repaired.
    NoAgent,
}

/// One seed: the site with the scheduler, with its maintenance windows only, and with no
/// agent.
#[derive(Debug, Clone, Serialize)]
pub struct SeedPair {
    pub seed: u64,
    pub wear: Vec<f64>,
    pub orders: usize,
    pub with_scheduler: SiteRun,
    pub maintenance_only: SiteRun,
    pub reroute_only: SiteRun,
    pub no_rerouting: SiteRun,
}

#[derive(Debug, Clone, Serialize)]
pub struct RerouteResult {
    pub seeds: u64,
    pub hours: f64,
    pub load: f64,
    pub repair_delay_h: f64,
    /// The scheduler's horizon: a line whose pump is predicted to reach the danger level
    /// within it is due for maintenance.
    pub risk_horizon_h: f64,
    pub runs: Vec<SeedPair>,
    /// Summed over the seeds.
    pub with_scheduler: Totals,
    pub maintenance_only: Totals,
    pub reroute_only: Totals,
    pub no_rerouting: Totals,
}

/// KPIs summed over seeds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub orders_late: usize,
    pub lateness_h: f64,
    pub failures: u32,
    pub planned_maintenance: u32,
    pub unplanned_down_h: f64,
    pub planned_down_h: f64,
    pub bottles_lost_to_failures: f64,
    pub order_bottles: f64,
}

impl Totals {
    fn of<'a>(runs: impl Iterator<Item = &'a SiteRun>) -> Totals {
        let mut t = Totals::default();
        for r in runs {
            let k = &r.kpis;
            t.orders_late += k.orders_late;
            t.lateness_h += k.lateness_h;
            t.failures += k.failures;
            t.planned_maintenance += k.planned_maintenance;
            t.unplanned_down_h += k.unplanned_down_h;
            t.planned_down_h += k.planned_down_h;
            t.bottles_lost_to_failures += k.bottles_lost_to_failures;
            t.order_bottles += k.order_bottles;
        }
        t
    }
}

/// Indices of the signals the scheduler reads, in a line's tick.
struct Signals {
    vibration: usize,
    speed: usize,
    filler: usize,
}

/// Ten-minute and one-minute means of a line's signals.
#[derive(Default, Clone)]
struct Means {
    vib_sum: f64,
    filler_sum: f64,
    n: u32,
    speed_min: f64,
    minute_speed: f64,
    minute_n: u32,
    running: bool,
    vibration: Option<f64>,
    rate_bph: f64,
}

impl Mode {
    /// The run's directory name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Scheduler => "scheduler",
            Mode::MaintenanceOnly => "maintenance-only",
            Mode::RerouteOnly => "reroute-only",
            Mode::NoAgent => "no-agent",
        }
    }
}

/// Runs `seed`'s site for `hours` in `mode`; a run with an agent keeps its keys and audit
/// log in the data directory `dir`.
pub fn run_site(
    seed: u64,
    hours: f64,
    mode: Mode,
    risk_horizon_h: f64,
    dir: &Path,
) -> Result<SiteRun> {
    let with_scheduler = mode != Mode::NoAgent;
    let plant = Plant::reference();
    let options = SiteOptions::two_lines(seed);
    let orders = site::orders(seed, hours, options.wear.len(), LOAD);
    let mut site = Site::new(&plant, seed, DEFAULT_START_MS, options, orders)?;
    let line_ids: Vec<String> = site.lines().iter().map(|l| l.id.clone()).collect();
    let sim = site
        .lines()
        .first()
        .map(|l| l.sim())
        .context("the site has no line")?;
    let idx = |s: &str| {
        sim.signal_index(s)
            .with_context(|| format!("the plant has no signal {s}"))
    };
    let sig = Signals {
        vibration: idx("pump.vibration")?,
        speed: idx("pump.speed")?,
        filler: idx("filler.bpm")?,
    };
    let (key, mut store) = if with_scheduler {
        let data = DataDir::open(dir)?;
        let db = data.audit_db();
        if db.exists() {
            std::fs::remove_file(&db)
                .with_context(|| format!("cannot replace the earlier run's {}", db.display()))?;
        }
        let store = SqliteStore::open(&db, data.key("audit")?)?;
        (data.key("agent-scheduler")?, Some(store))
    } else {
        // No agent proposes: a throwaway key for guards that decide nothing.
        (frames::keys::generate()?, None)
    };
    let mut audit = |entries: Vec<Entry>| -> Result<u64> {
        match store.as_mut() {
            Some(s) => Ok(s.append(&entries)?.seq),
            None => Ok(0),
        }
    };
    let mut guards: HashMap<String, Guard> = HashMap::new();
    for id in &line_ids {
        let mut p = plant.clone();
        p.plant.id = id.clone();
        p.plant.name = format!("Bottling {id}");
        let p = Arc::new(p);
        let policy = Policy::parse(
            &format!("{DEFAULT_POLICY}\n{SITE_POLICY}"),
            "default + site",
            &p,
        )?;
        let mut reg = AgentRegistry::default();
        reg.register(SCHEDULER, key.verifying_key());
        guards.insert(id.clone(), Guard::new(p, reg, policy));
    }
    let refs: Vec<&str> = line_ids.iter().map(String::as_str).collect();
    let mut scheduler = Scheduler::new(&key, &refs);
    scheduler.risk_horizon_h = risk_horizon_h;
    scheduler.reroute = matches!(mode, Mode::Scheduler | Mode::RerouteOnly);
    scheduler.maintain = matches!(mode, Mode::Scheduler | Mode::MaintenanceOnly);
    let approver = Human::new("approver", &["viewer", "operator", "approver"]);
    let mut waiting: Vec<(u64, String, u64)> = Vec::new();
    let mut means = vec![Means::default(); line_ids.len()];
    let mut run = SiteRun {
        kpis: site.kpis(),
        proposals: 0,
        executed: 0,
        approved: 0,
        denied: 0,
        log: Vec::new(),
        audit_records: 0,
    };
    let trust = InputTrust::default();
    let total_s = (hours * 3600.0) as u64;
    for s in 1..=total_s {
        let ticks = site.step();
        let now_ms = DEFAULT_START_MS + s as i64 * 1000;
        for (m, tick) in means.iter_mut().zip(&ticks) {
            let v = |i: usize| tick.values.get(i).copied().unwrap_or(0.0);
            m.vib_sum += v(sig.vibration);
            m.filler_sum += v(sig.filler);
            m.minute_speed += v(sig.speed);
            m.speed_min = if m.n == 0 {
                v(sig.speed)
            } else {
                m.speed_min.min(v(sig.speed))
            };
            m.n += 1;
            m.minute_n += 1;
            if m.minute_n == 60 {
                m.running = m.minute_speed / 60.0 > 500.0;
                m.minute_speed = 0.0;
                m.minute_n = 0;
            }
            if m.n == 600 {
                let running_throughout = m.speed_min > 500.0;
                m.vibration = running_throughout.then(|| m.vib_sum / 600.0);
                if running_throughout {
                    // Good bottles: the filler's rate less about 1 % rejects.
                    m.rate_bph = m.filler_sum / 600.0 * 60.0 * 0.99;
                }
                m.vib_sum = 0.0;
                m.filler_sum = 0.0;
                m.n = 0;
            }
        }
        if !with_scheduler || s % 60 != 0 {
            continue;
        }
        let t_h = s as f64 / 3600.0;
        // Approvals that have come due.
        let (due, later): (Vec<_>, Vec<_>) = waiting.drain(..).partition(|(_, _, at)| *at <= s);
        waiting = later;
        for (id, line, _) in due {
            let Some(g) = guards.get_mut(&line) else {
                continue;
            };
            let situation = guard::Situation {
                trust: &trust,
                active: &[],
            };
            let result = g.approve(id, &approver, &situation, now_ms);
            if let Ok(d) = &result {
                let rec = d.record(id, SCHEDULER, None, None);
                run.audit_records = audit(vec![Entry::new(
                    now_ms,
                    "approval",
                    json!({ "line": line, "proposal_id": id, "by": approver.name, "verb": "approve", "decision": rec }),
                )])?;
            }
            match result {
                Ok(Decision::Execute(a)) => {
                    run.approved += 1;
                    let done = apply(&mut site, &line, &a, &mut audit, now_ms)?;
                    run.audit_records = done.0;
                    run.log
                        .push(format!("{t_h:6.2} h {line}: approved {id}; {}", done.1));
                }
                Ok(other) => run.log.push(format!("{t_h:6.2} h {line}: {id}: {other:?}")),
                Err(e) => run.log.push(format!("{t_h:6.2} h {line}: {id}: {e}")),
            }
        }
        let status: Vec<LineStatus> = line_ids
            .iter()
            .zip(&means)
            .map(|(id, m)| LineStatus {
                id: id.clone(),
                running: m.running,
                vibration: m.vibration,
                rate_bph: if m.rate_bph > 0.0 {
                    m.rate_bph
                } else {
                    site::NOMINAL_BOTTLES_PER_H
                },
            })
            .collect();
        let jobs: Vec<QueuedJob> = site
            .lines()
            .iter()
            .flat_map(|l| {
                l.queue().map(|j| QueuedJob {
                    line: l.id.clone(),
                    order: j.order.clone(),
                    remaining: j.remaining,
                    due_ms: DEFAULT_START_MS + j.due_s as i64 * 1000,
                    started: j.started,
                })
            })
            .collect();
        for id in &line_ids {
            let (Some(g), Some(identity)) = (guards.get_mut(id), scheduler.identity(id)) else {
                continue;
            };
            if identity.needs_token(now_ms, 5 * 60 * 1000) {
                let t = g.agents().issue_token(
                    SCHEDULER,
                    frames::keys::random_hex(32).context("no randomness for a token")?,
                    now_ms,
                )?;
                identity.set_token(t);
            }
        }
        for (line, sp) in scheduler.observe(&status, &jobs, now_ms) {
            run.proposals += 1;
            let Some(g) = guards.get_mut(&line) else {
                continue;
            };
            let reason = serde_json::from_str::<guard::Proposal>(&sp.body)
                .map(|p| p.reason)
                .unwrap_or_default();
            let (id, decision, rec) = g.decide(&sp, &[], &trust, now_ms);
            let proposal: serde_json::Value =
                serde_json::from_str(&sp.body).unwrap_or(serde_json::Value::Null);
            run.audit_records = audit(vec![
                Entry::new(
                    now_ms,
                    "proposal",
                    json!({ "line": line, "proposal_id": id, "proposal": proposal }),
                ),
                Entry::new(now_ms, "decision", json!({ "line": line, "decision": rec })),
            ])?;
            match decision {
                Decision::Execute(a) => {
                    run.executed += 1;
                    let done = apply(&mut site, &line, &a, &mut audit, now_ms)?;
                    run.audit_records = done.0;
                    run.log
                        .push(format!("{t_h:6.2} h {line}: {}: {reason}", done.1));
                }
                Decision::Pending { id, why } => {
                    waiting.push((id, line.clone(), s + APPROVAL_DELAY_S));
                    run.log.push(format!(
                        "{t_h:6.2} h {line}: waits for approval {id} ({why}): {reason}"
                    ));
                }
                Decision::Denied { reason: r, detail } => {
                    run.denied += 1;
                    run.log.push(format!(
                        "{t_h:6.2} h {line}: denied ({}): {detail}",
                        r.as_str()
                    ));
                }
            }
        }
    }
    if let Some(s) = store.as_mut() {
        s.checkpoint()?;
    }
    run.kpis = site.kpis();
    Ok(run)
}

/// Applies an approved command to the site and audits what happened: `actuation`, or
/// `actuation_failed` with the site's reason (an order filled since it was proposed, say).
/// Returns the audit log's size and words for the run's log.
fn apply(
    site: &mut Site,
    line: &str,
    approved: &guard::Approved,
    audit: &mut impl FnMut(Vec<Entry>) -> Result<u64>,
    now_ms: i64,
) -> Result<(u64, String)> {
    let c = approved.command();
    let (entry, words) = match site.apply(line, &c.command) {
        Ok(()) => (
            Entry::new(now_ms, "actuation", json!({ "line": line, "command": c })),
            format!("executed {}", c.id),
        ),
        Err(e) => (
            Entry::new(
                now_ms,
                "actuation_failed",
                json!({ "line": line, "command": c, "error": e.to_string() }),
            ),
            format!("{} not executed: {e}", c.id),
        ),
    };
    Ok((audit(vec![entry])?, words))
}

/// Seeds 1 to `seeds`, each with and without the scheduler.
pub fn bench(
    seeds: u64,
    hours: f64,
    risk_horizon_h: f64,
    data_dir: &Path,
) -> Result<RerouteResult> {
    let mut runs = Vec::new();
    for seed in 1..=seeds {
        eprint!("\rreroute: seed {seed}/{seeds} with the scheduler    ");
        let with_scheduler = run_site(
            seed,
            hours,
            Mode::Scheduler,
            risk_horizon_h,
            &data_dir
                .join(format!("seed-{seed}"))
                .join(Mode::Scheduler.name()),
        )?;
        eprint!("\rreroute: seed {seed}/{seeds} maintenance windows only");
        let maintenance_only = run_site(
            seed,
            hours,
            Mode::MaintenanceOnly,
            risk_horizon_h,
            &data_dir
                .join(format!("seed-{seed}"))
                .join(Mode::MaintenanceOnly.name()),
        )?;
        eprint!("\rreroute: seed {seed}/{seeds} rerouting only          ");
        let reroute_only = run_site(
            seed,
            hours,
            Mode::RerouteOnly,
            risk_horizon_h,
            &data_dir
                .join(format!("seed-{seed}"))
                .join(Mode::RerouteOnly.name()),
        )?;
        eprint!("\rreroute: seed {seed}/{seeds} no agent               ");
        let no_rerouting = run_site(
            seed,
            hours,
            Mode::NoAgent,
            risk_horizon_h,
            &data_dir
                .join(format!("seed-{seed}"))
                .join(Mode::NoAgent.name()),
        )?;
        let options = SiteOptions::two_lines(seed);
        runs.push(SeedPair {
            seed,
            orders: site::orders(seed, hours, options.wear.len(), LOAD).len(),
            wear: options.wear,
            with_scheduler,
            maintenance_only,
            reroute_only,
            no_rerouting,
        });
    }
    eprintln!();
    Ok(RerouteResult {
        seeds,
        hours,
        load: LOAD,
        repair_delay_h: site::REPAIR_DELAY_S as f64 / 3600.0,
        risk_horizon_h,
        with_scheduler: Totals::of(runs.iter().map(|r| &r.with_scheduler)),
        maintenance_only: Totals::of(runs.iter().map(|r| &r.maintenance_only)),
        reroute_only: Totals::of(runs.iter().map(|r| &r.reroute_only)),
        no_rerouting: Totals::of(runs.iter().map(|r| &r.no_rerouting)),
        runs,
    })
}

pub fn table(r: &RerouteResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "rerouting: {} seeds x {} h, two lines, load {:.0} %, {:.0} h from a failure to its repair, risk horizon {} h",
        r.seeds,
        r.hours,
        r.load * 100.0,
        r.repair_delay_h,
        r.risk_horizon_h
    );
    let _ = writeln!(
        out,
        "{:<6} {:>6}  {:>22} {:>26} {:>16}",
        "seed", "orders", "orders late: all / maint / reroute / none", "hours late", "failures"
    );
    for p in &r.runs {
        let k = [
            &p.with_scheduler.kpis,
            &p.maintenance_only.kpis,
            &p.reroute_only.kpis,
            &p.no_rerouting.kpis,
        ];
        let _ = writeln!(
            out,
            "{:<6} {:>6}  {:>22} {:>26} {:>16}",
            p.seed,
            p.orders,
            k.map(|k| k.orders_late.to_string()).join(" / "),
            k.map(|k| format!("{:.1}", k.lateness_h)).join(" / "),
            k.map(|k| k.failures.to_string()).join(" / "),
        );
    }
    let _ = writeln!(
        out,
        "\n{:<34} {:>10} {:>10} {:>9} {:>12} {:>12} {:>14} {:>16}",
        "total",
        "orders late",
        "hours late",
        "failures",
        "unplanned h",
        "planned h",
        "bottles lost",
        "bottles to orders"
    );
    for (name, t) in [
        ("with the scheduler", &r.with_scheduler),
        ("maintenance windows, no rerouting", &r.maintenance_only),
        ("rerouting, no maintenance windows", &r.reroute_only),
        ("no agent", &r.no_rerouting),
    ] {
        let _ = writeln!(
            out,
            "{name:<34} {:>10} {:>10.1} {:>9} {:>12.1} {:>12.1} {:>14.0} {:>16.0}",
            t.orders_late,
            t.lateness_h,
            t.failures,
            t.unplanned_down_h,
            t.planned_down_h,
            t.bottles_lost_to_failures,
            t.order_bottles,
        );
    }
    out
}

/// A panel's title, the value its bars show and the label above each bar.
type Panel = (&'static str, fn(&SiteKpis) -> f64, fn(&SiteKpis) -> String);

/// Two panels of bars per seed, with the scheduler (green), with its maintenance windows
/// but no rerouting (blue), with its rerouting but no maintenance windows (orange) and
/// with no agent (grey):
/// hours late summed over the orders, and unplanned downtime.
pub fn svg(r: &RerouteResult) -> String {
    let (pad, group, panel_h) = (50.0, 110.0, 260.0);
    let w = 2.0 * pad + group * r.runs.len().max(1) as f64;
    let h = 2.0 * panel_h + 20.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n"
    );
    let panels: [Panel; 2] = [
        (
            "hours late, summed over orders (labels: orders late)",
            |k| k.lateness_h,
            |k| k.orders_late.to_string(),
        ),
        (
            "unplanned downtime, h (labels: pump failures)",
            |k| k.unplanned_down_h,
            |k| k.failures.to_string(),
        ),
    ];
    for (p, (title, value, label)) in panels.iter().enumerate() {
        let top0 = panel_h * p as f64;
        let base = top0 + panel_h - 30.0;
        let top = r
            .runs
            .iter()
            .flat_map(|s| {
                [
                    value(&s.with_scheduler.kpis),
                    value(&s.maintenance_only.kpis),
                    value(&s.reroute_only.kpis),
                    value(&s.no_rerouting.kpis),
                ]
            })
            .fold(1e-9, f64::max)
            * 1.2;
        let y = |v: f64| base - (panel_h - 80.0) * v / top;
        let _ = write!(
            out,
            "<text x=\"{pad}\" y=\"{:.1}\">{title}: scheduler (green), maintenance windows only (blue), rerouting only (orange), no agent (grey)</text>\n<line x1=\"{pad}\" x2=\"{:.1}\" y1=\"{base:.1}\" y2=\"{base:.1}\" stroke=\"black\"/>\n",
            top0 + 22.0,
            w - pad
        );
        // The y axis: zero and the largest bar.
        let max = top / 1.2;
        let _ = write!(
            out,
            "<line x1=\"{pad}\" x2=\"{pad}\" y1=\"{:.1}\" y2=\"{base:.1}\" stroke=\"black\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"10\">{max:.1}</text>\n<text x=\"{:.1}\" y=\"{base:.1}\" text-anchor=\"end\" font-size=\"10\">0</text>\n<line x1=\"{:.1}\" x2=\"{pad}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>\n",
            y(max),
            pad - 4.0,
            y(max) + 4.0,
            pad - 4.0,
            pad - 3.0,
            y(max),
            y(max)
        );
        for (i, s) in r.runs.iter().enumerate() {
            let x0 = pad + group * i as f64 + 8.0;
            for (k, (kpis, colour)) in [
                (&s.with_scheduler.kpis, "#2e7d32"),
                (&s.maintenance_only.kpis, "#90caf9"),
                (&s.reroute_only.kpis, "#ffb74d"),
                (&s.no_rerouting.kpis, "#9e9e9e"),
            ]
            .iter()
            .enumerate()
            {
                let v = value(kpis);
                let x = x0 + 24.0 * k as f64;
                let _ = write!(
                    out,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"22\" height=\"{:.1}\" fill=\"{colour}\"><title>{v:.2}</title></rect>\n<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{}</text>\n",
                    y(v),
                    base - y(v),
                    x + 6.0,
                    y(v) - 3.0,
                    label(kpis)
                );
            }
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\">seed {}</text>",
                x0 + 6.0,
                base + 16.0,
                s.seed
            );
        }
    }
    out += "</svg>\n";
    out
}
