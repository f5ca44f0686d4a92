//! The scheduler: reroutes orders between the lines of a site when a line's failure risk
//! rises or a line stops, and proposes maintenance windows for pumps whose bearings are
//! heading for failure. It proposes to each line's guard; it changes nothing itself.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ed25519_dalek::SigningKey;
use guard::{Action, SignedProposal};
use serde::Serialize;

use crate::{Identity, VIBRATION_DANGER, VibrationTrend};

/// What the scheduler's proposals rest on, per line.
pub const SCHEDULER_INPUTS: &[&str] = &["pump.vibration", "pump.speed", "filler.bpm"];

/// One line as the scheduler sees it, from that line's measurements.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LineStatus {
    pub id: String,
    /// The pump runs and the filler fills.
    pub running: bool,
    /// Mean pump vibration over the last ten minutes, mm/s (None when not running).
    pub vibration: Option<f64>,
    /// Good bottles the line fills in an hour when it runs.
    pub rate_bph: f64,
}

/// An order on a line, from the site's order book, in the line's filling order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueuedJob {
    pub line: String,
    pub order: String,
    /// Bottles still to fill.
    pub remaining: f64,
    pub due_ms: i64,
    /// The line has filled part of it.
    pub started: bool,
}

/// What the scheduler knows of each line between evaluations.
#[derive(Debug, Clone, Default)]
struct Track {
    trend: VibrationTrend,
    down_since_ms: Option<i64>,
    /// When the scheduler last proposed maintenance for this line's pump.
    maintenance_proposed_ms: Option<i64>,
    /// The line went down after that proposal (the planned window, not a failure).
    down_planned: bool,
    hours_to_danger: Option<f64>,
}

/// The scheduler's view of a line after an evaluation, for reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LineOutlook {
    pub line: String,
    pub running: bool,
    /// Hours until the pump's vibration reaches the danger level.
    pub hours_to_danger: Option<f64>,
    /// Hours from now until the line is expected to fill again (0 when it runs and is
    /// not due for maintenance).
    pub unavailable_h: f64,
    /// Predicted hours past due, summed over the line's orders.
    pub predicted_lateness_h: f64,
}

/// Reroutes orders between lines and proposes maintenance windows. One identity (and so
/// one token) per line's guard, all with the agent's one key.
pub struct Scheduler {
    ids: BTreeMap<String, Identity>,
    tracks: BTreeMap<String, Track>,
    next_eval_ms: i64,
    /// Hours to the danger level under which a line counts as at risk: maintenance is
    /// proposed, and its orders are rerouted where they fill sooner.
    pub risk_horizon_h: f64,
    /// Hours a line is expected to stay down when it stopped without planned maintenance.
    pub expected_repair_h: f64,
    /// Hours of a planned bearing change.
    pub maintenance_h: f64,
    /// A move must cut the predicted lateness, or finish an order on a stopped or at-risk
    /// line this many hours sooner, to be proposed.
    pub min_gain_h: f64,
    /// Moves proposed per evaluation at most.
    pub max_moves: usize,
    /// Propose moves of orders (off: maintenance windows only, to measure what the
    /// rerouting itself adds).
    pub reroute: bool,
    /// Propose maintenance windows (off: rerouting only).
    pub maintain: bool,
    /// The latest outlook, per line.
    pub outlook: Vec<LineOutlook>,
}

/// The agent's name in the guards' registries and policies.
pub const SCHEDULER: &str = "scheduler";

impl Scheduler {
    /// A scheduler for `lines`, signing with `key`.
    pub fn new(key: &SigningKey, lines: &[&str]) -> Scheduler {
        Scheduler {
            ids: lines
                .iter()
                .map(|l| (l.to_string(), Identity::new(SCHEDULER, key.clone())))
                .collect(),
            tracks: lines
                .iter()
                .map(|l| (l.to_string(), Track::default()))
                .collect(),
            next_eval_ms: i64::MIN,
            risk_horizon_h: 6.0,
            expected_repair_h: 6.0,
            maintenance_h: 2.0,
            min_gain_h: 0.25,
            max_moves: 8,
            reroute: true,
            maintain: true,
            outlook: Vec::new(),
        }
    }

    /// The identity the scheduler uses with `line`'s guard (to set its token).
    pub fn identity(&mut self, line: &str) -> Option<&mut Identity> {
        self.ids.get_mut(line)
    }

    /// Looks at the lines and the order book; returns proposals, each for the guard of the
    /// line named with it. Evaluates every ten minutes, and at once when a line stops.
    pub fn observe(
        &mut self,
        lines: &[LineStatus],
        jobs: &[QueuedJob],
        now_ms: i64,
    ) -> Vec<(String, SignedProposal)> {
        let mut stopped_now = false;
        for l in lines {
            let Some(track) = self.tracks.get_mut(&l.id) else {
                continue;
            };
            match (l.running, track.down_since_ms) {
                (false, None) => {
                    track.down_since_ms = Some(now_ms);
                    track.down_planned = track
                        .maintenance_proposed_ms
                        .is_some_and(|t| now_ms - t < 3_600_000);
                    // Whatever stopped it, the bearing is changed before it runs again.
                    track.trend.clear();
                    track.hours_to_danger = None;
                    stopped_now = true;
                }
                (true, Some(_)) => {
                    track.down_since_ms = None;
                    track.down_planned = false;
                }
                _ => {}
            }
        }
        if now_ms < self.next_eval_ms && !stopped_now {
            return Vec::new();
        }
        let periodic = now_ms >= self.next_eval_ms;
        if periodic {
            self.next_eval_ms = now_ms + 10 * 60 * 1000;
        }
        let mut out = Vec::new();
        for l in lines {
            let Some(track) = self.tracks.get_mut(&l.id) else {
                continue;
            };
            if periodic
                && l.running
                && let Some(v) = l.vibration
            {
                track.trend.push(now_ms, v);
                track.hours_to_danger = track.trend.hours_to_danger();
            }
            let at_risk = l.running
                && track
                    .hours_to_danger
                    .is_some_and(|h| h < self.risk_horizon_h);
            if at_risk
                && self.maintain
                && track
                    .maintenance_proposed_ms
                    .is_none_or(|t| now_ms - t > 6 * 3_600_000)
                && let Some(h) = track.hours_to_danger
                && let Some(id) = self.ids.get_mut(&l.id)
            {
                track.maintenance_proposed_ms = Some(now_ms);
                let p = id.sign(
                    Action::Maintenance {
                        asset: "pump".into(),
                    },
                    format!(
                        "{}: pump vibration {:.2} mm/s rising, about {h:.1} h to the {VIBRATION_DANGER} mm/s danger level; maintenance window now, {:.0} h for the bearing change, before the failure (an unplanned repair stops the line about {:.0} h); its orders are rerouted where they fill sooner",
                        l.id,
                        l.vibration.unwrap_or(f64::NAN),
                        self.maintenance_h,
                        self.expected_repair_h
                    ),
                    vec![],
                    SCHEDULER_INPUTS,
                    now_ms,
                );
                out.push((l.id.clone(), p));
            }
        }
        out.extend(self.reroute(lines, jobs, now_ms));
        out
    }

    /// Hours from now until `l` fills again: a line that is down, the repair or
    /// maintenance expected left (at least a quarter of an hour); a running line whose
    /// pump is due within the risk horizon, the bearing change's hours from now (with
    /// maintenance windows off too: its failure is then near, and orders that can fill
    /// elsewhere should not wait for it).
    fn unavailable_h(&self, l: &LineStatus, now_ms: i64) -> f64 {
        let Some(track) = self.tracks.get(&l.id) else {
            return 0.0;
        };
        match track.down_since_ms {
            Some(since) => {
                let expected = if track.down_planned {
                    self.maintenance_h
                } else {
                    self.expected_repair_h
                };
                (expected - (now_ms - since) as f64 / 3.6e6).max(0.25)
            }
            None => {
                let due_for_maintenance = track
                    .hours_to_danger
                    .is_some_and(|h| h < self.risk_horizon_h);
                if due_for_maintenance {
                    self.maintenance_h
                } else {
                    0.0
                }
            }
        }
    }

    fn reroute(
        &mut self,
        lines: &[LineStatus],
        jobs: &[QueuedJob],
        now_ms: i64,
    ) -> Vec<(String, SignedProposal)> {
        let mut plan: Vec<Plan> = lines
            .iter()
            .map(|l| {
                let unavailable_h = self.unavailable_h(l, now_ms);
                Plan {
                    id: l.id.clone(),
                    unavailable_h,
                    rate_bph: l.rate_bph.max(1.0),
                    troubled: !l.running || unavailable_h > 0.0,
                    jobs: jobs.iter().filter(|j| j.line == l.id).cloned().collect(),
                }
            })
            .collect();
        let mut moves = Vec::new();
        if !self.reroute {
            return moves;
        }
        // Orders in due order, earliest first; a started order moves only off a line
        // that is down.
        let mut candidates: Vec<QueuedJob> = jobs.to_vec();
        candidates.sort_by_key(|j| j.due_ms);
        for job in candidates {
            if moves.len() >= self.max_moves {
                break;
            }
            let Some(src) = plan.iter().position(|p| p.id == job.line) else {
                continue;
            };
            let src_down = lines.get(src).is_some_and(|l| !l.running);
            if job.started && !src_down {
                continue;
            }
            // The best destination: its index, the lateness cut, how much sooner the order
            // fills, the lateness before, and both lines' plans after the move.
            let mut best: Option<(usize, f64, f64, f64, Plan, Plan)> = None;
            for dst in 0..plan.len() {
                let (Some(s), Some(d)) = (plan.get(src), plan.get(dst)) else {
                    continue;
                };
                if dst == src || d.troubled {
                    continue;
                }
                let before = s.lateness_h(now_ms) + d.lateness_h(now_ms);
                let finish_before = s.finish_h(&job.order);
                let (s2, d2) = moved(s, d, &job);
                let after = s2.lateness_h(now_ms) + d2.lateness_h(now_ms);
                let finish_after = d2.finish_h(&job.order);
                let gain = before - after;
                let sooner =
                    finish_before.unwrap_or(f64::INFINITY) - finish_after.unwrap_or(f64::INFINITY);
                let worth = gain > self.min_gain_h
                    || (s.troubled && gain >= -1e-9 && sooner > self.min_gain_h);
                if worth && best.as_ref().is_none_or(|b| gain > b.1) {
                    best = Some((dst, gain, sooner, before, s2, d2));
                }
            }
            let Some((dst, gain, sooner, before, s2, d2)) = best else {
                continue;
            };
            let (Some(s), Some(d)) = (plan.get(src), plan.get(dst)) else {
                continue;
            };
            let mut why = String::new();
            let _ = write!(
                why,
                "{} {}: order {} ({:.0} bottles left, due in {:.1} h) {} on {}; predicted lateness of both lines {before:.1} h -> {:.1} h",
                s.id,
                if src_down {
                    format!("is down (back in about {:.1} h)", s.unavailable_h)
                } else if s.unavailable_h > 0.0 {
                    format!("is due for a {:.0} h bearing change", s.unavailable_h)
                } else {
                    "is loaded past its orders' due times".to_string()
                },
                job.order,
                job.remaining,
                (job.due_ms - now_ms) as f64 / 3.6e6,
                if sooner >= 0.0 {
                    format!("fills {sooner:.1} h sooner")
                } else {
                    format!(
                        "fills {:.1} h later, clearing the way for orders due sooner,",
                        -sooner
                    )
                },
                d.id,
                before - gain,
            );
            let (src_id, dst_id) = (s.id.clone(), d.id.clone());
            if let Some(p) = plan.get_mut(src) {
                *p = s2;
            }
            if let Some(p) = plan.get_mut(dst) {
                *p = d2;
            }
            if let Some(id) = self.ids.get_mut(&dst_id) {
                let p = id.sign(
                    Action::TakeOrder {
                        order: job.order.clone(),
                        from_line: src_id,
                    },
                    why,
                    vec![],
                    SCHEDULER_INPUTS,
                    now_ms,
                );
                moves.push((dst_id, p));
            }
        }
        self.outlook = plan
            .iter()
            .map(|p| LineOutlook {
                line: p.id.clone(),
                running: lines.iter().any(|l| l.id == p.id && l.running),
                hours_to_danger: self.tracks.get(&p.id).and_then(|t| t.hours_to_danger),
                unavailable_h: p.unavailable_h,
                predicted_lateness_h: p.lateness_h(now_ms),
            })
            .collect();
        moves
    }
}

/// A line's predicted schedule: when it fills again, how fast, and its orders in filling
/// order.
#[derive(Debug, Clone)]
struct Plan {
    id: String,
    unavailable_h: f64,
    rate_bph: f64,
    /// Down or due for maintenance: takes no orders from other lines.
    troubled: bool,
    jobs: Vec<QueuedJob>,
}

impl Plan {
    /// Hours from now at which each order is filled.
    fn finishes(&self) -> impl Iterator<Item = (&QueuedJob, f64)> {
        let mut t = self.unavailable_h;
        self.jobs.iter().map(move |j| {
            t += j.remaining / self.rate_bph;
            (j, t)
        })
    }

    fn finish_h(&self, order: &str) -> Option<f64> {
        self.finishes()
            .find(|(j, _)| j.order == order)
            .map(|(_, t)| t)
    }

    /// Predicted hours past due, summed over the line's orders.
    fn lateness_h(&self, now_ms: i64) -> f64 {
        self.finishes()
            .map(|(j, t)| (t - (j.due_ms - now_ms) as f64 / 3.6e6).max(0.0))
            .sum()
    }
}

/// `src` and `dst` after `job` moves from one to the other; it joins `dst` in due-date
/// order behind any order already started there, as the site inserts it.
fn moved(src: &Plan, dst: &Plan, job: &QueuedJob) -> (Plan, Plan) {
    let mut s = src.clone();
    s.jobs.retain(|j| j.order != job.order);
    let mut d = dst.clone();
    let at = d
        .jobs
        .iter()
        .position(|j| !j.started && j.due_ms > job.due_ms)
        .unwrap_or(d.jobs.len());
    d.jobs.insert(
        at,
        QueuedJob {
            line: d.id.clone(),
            started: false,
            ..job.clone()
        },
    );
    (s, d)
}
