//! A site of several filling lines, each a reference bottling line ([`Sim`]) with its own
//! seed and bearing, sharing a stream of production orders with due dates.
//!
//! Orders are released over time and dispatched, as a plant's order system does without
//! any agent, to the line with the least work queued. A line fills its orders in due-date
//! order (the one started finishes first); the good bottles it fills go to the order at
//! the head of its queue. A pump that fails stops its line until the site's crew has
//! repaired it: a call-out delay ([`SiteOptions::repair_delay_s`]) and then the two hours
//! of a bearing change. Planned maintenance is the two hours alone.
//!
//! What an agent may change is which line fills an order ([`PlantCommand::TakeOrder`],
//! applied to the line that takes it) and when a pump is maintained
//! ([`PlantCommand::Maintenance`]); both come from the lines' guards.

use std::collections::VecDeque;

use plant_model::{Plant, PlantCommand};
use serde::Serialize;

use crate::rng::Rng;
use crate::{Conditions, Fault, FaultKind, Sim, SimError, Tick};

/// A production order as released to the site.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrderSpec {
    pub id: String,
    /// Good bottles ordered.
    pub bottles: f64,
    /// Seconds after the start when the order is released to the lines.
    pub release_s: u64,
    /// Seconds after the start by which it should be filled.
    pub due_s: u64,
}

/// Good bottles a line fills in an hour at its initial filler speed (500 a minute, less
/// about 1 % rejects).
pub const NOMINAL_BOTTLES_PER_H: f64 = 29_700.0;

/// Seconds from a failure to the start of its repair in [`SiteOptions::two_lines`].
pub const REPAIR_DELAY_S: u64 = 4 * 3600;

/// A stream of orders for `lines` lines over `hours`, drawn from `seed` (a generator of
/// its own): 15,000 to 75,000 bottles each, arriving at random (exponential gaps) so that
/// they ask for `load` of the lines' nominal capacity; each due its filling time on one
/// line times 2 to 4, plus 2 to 6 hours, after its release.
pub fn orders(seed: u64, hours: f64, lines: usize, load: f64) -> Vec<OrderSpec> {
    let mut rng = Rng::new(seed ^ 0x6f72_6465_7273_2121);
    let end_s = hours.clamp(0.0, 720.0) * 3600.0;
    let mean_bottles = 45_000.0;
    let rate = NOMINAL_BOTTLES_PER_H * lines.max(1) as f64 * load.clamp(0.01, 2.0);
    let mean_gap_s = mean_bottles / rate * 3600.0;
    let mut out = Vec::new();
    let mut t = 0.0;
    loop {
        t += -mean_gap_s * (1.0 - rng.unit()).max(1e-12).ln();
        if t >= end_s {
            break;
        }
        let bottles = (rng.uniform(15.0, 75.0)).round() * 1000.0;
        let fill_h = bottles / NOMINAL_BOTTLES_PER_H;
        let slack_h = fill_h * rng.uniform(2.0, 4.0) + rng.uniform(2.0, 6.0);
        out.push(OrderSpec {
            id: format!("o{:04}", out.len() + 1),
            bottles,
            release_s: t as u64,
            due_s: (t + slack_h * 3600.0) as u64,
        });
    }
    out
}

/// How a site is built and run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SiteOptions {
    /// Seconds from a pump's failure until its repair starts (call-out, diagnosis, parts);
    /// the repair itself is the two hours of planned maintenance.
    pub repair_delay_s: u64,
    /// Each line's bearing wear rate, a multiple of the nominal one (one per line).
    pub wear: Vec<f64>,
}

impl SiteOptions {
    /// Two lines for `seed`: one of them (drawn) with a bearing that wears 3 to 6 times
    /// faster than nominal, so that it fails within a day or so; the other nominal. Four
    /// hours from a failure to the start of its repair.
    pub fn two_lines(seed: u64) -> SiteOptions {
        let mut rng = Rng::new(seed ^ 0x7369_7465_7769_7265);
        let fast = rng.uniform(3.0, 6.0);
        let wear = if rng.unit() < 0.5 {
            vec![fast, 1.0]
        } else {
            vec![1.0, fast]
        };
        SiteOptions {
            repair_delay_s: REPAIR_DELAY_S,
            wear,
        }
    }
}

/// An order on a line: what remains of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub order: String,
    pub remaining: f64,
    pub due_s: u64,
    /// The line has filled some of it.
    pub started: bool,
}

/// A line of the site.
pub struct Line {
    pub id: String,
    sim: Sim,
    queue: VecDeque<Job>,
    last_good: f64,
    repair_at_s: Option<u64>,
    /// Seconds without a pump: failed, waiting for repair, under repair.
    pub unplanned_down_s: u64,
    /// Seconds in maintenance that no failure caused.
    pub planned_down_s: u64,
    /// The maintenance under way was asked for before any failure.
    planned: bool,
    pub failures: u32,
    pub planned_maintenance: u32,
    /// Good bottles filled with no order to fill.
    pub unassigned_bottles: f64,
    /// Good bottles filled into orders.
    pub order_bottles: f64,
}

impl Line {
    pub fn sim(&self) -> &Sim {
        &self.sim
    }

    pub fn queue(&self) -> impl Iterator<Item = &Job> {
        self.queue.iter()
    }

    /// Bottles still to fill on this line.
    pub fn work(&self) -> f64 {
        self.queue.iter().map(|j| j.remaining).sum()
    }

    /// Inserts a job in due-date order, behind a job already started.
    fn insert(&mut self, job: Job) {
        let at = self
            .queue
            .iter()
            .position(|j| !j.started && j.due_s > job.due_s)
            .unwrap_or(self.queue.len());
        self.queue.insert(at, job);
    }
}

/// An order filled.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Completed {
    pub order: String,
    pub line: String,
    pub done_s: u64,
    pub due_s: u64,
}

/// What the site achieved: the KPIs of rerouting.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SiteKpis {
    pub hours: f64,
    pub orders_released: usize,
    pub orders_completed: usize,
    /// Completed after their due time.
    pub completed_late: usize,
    /// Not completed and past their due time at the end.
    pub open_overdue: usize,
    /// Late, completed or open.
    pub orders_late: usize,
    /// Hours past due, summed over late orders (open ones counted to the end).
    pub lateness_h: f64,
    /// Good bottles filled into orders.
    pub order_bottles: f64,
    pub failures: u32,
    pub planned_maintenance: u32,
    pub unplanned_down_h: f64,
    pub planned_down_h: f64,
    /// Good bottles the lines could not fill while a failed pump stopped them, at the
    /// nominal rate.
    pub bottles_lost_to_failures: f64,
}

/// Several lines and their orders.
pub struct Site {
    lines: Vec<Line>,
    /// Not yet released, latest first (popped from the back).
    unreleased: Vec<OrderSpec>,
    released: usize,
    completed: Vec<Completed>,
    t_s: u64,
    options: SiteOptions,
}

impl Site {
    /// Lines `line1`, `line2`, … of `plant`, line i seeded with `seed * 16 + i` in the
    /// reference conditions, with the wear of `options`; `orders` released over time.
    pub fn new(
        plant: &Plant,
        seed: u64,
        start_ms: i64,
        options: SiteOptions,
        orders: Vec<OrderSpec>,
    ) -> Result<Site, SimError> {
        let mut lines = Vec::new();
        for (i, &wear) in options.wear.iter().enumerate() {
            let line_seed = seed.wrapping_mul(16).wrapping_add(i as u64 + 1);
            let mut sim = Sim::with_conditions(plant, line_seed, start_ms, Conditions::default())?;
            if wear != 1.0 {
                sim.add_fault(Fault {
                    kind: FaultKind::Wear,
                    target: "pump".into(),
                    start_s: 0,
                    duration_s: None,
                    magnitude: wear,
                });
            }
            lines.push(Line {
                id: format!("line{}", i + 1),
                sim,
                queue: VecDeque::new(),
                last_good: 0.0,
                repair_at_s: None,
                unplanned_down_s: 0,
                planned_down_s: 0,
                planned: false,
                failures: 0,
                planned_maintenance: 0,
                unassigned_bottles: 0.0,
                order_bottles: 0.0,
            });
        }
        let mut unreleased = orders;
        unreleased.sort_by_key(|o| std::cmp::Reverse(o.release_s));
        Ok(Site {
            lines,
            unreleased,
            released: 0,
            completed: Vec::new(),
            t_s: 0,
            options,
        })
    }

    pub fn lines(&self) -> &[Line] {
        &self.lines
    }

    pub fn line(&self, id: &str) -> Option<&Line> {
        self.lines.iter().find(|l| l.id == id)
    }

    pub fn completed(&self) -> &[Completed] {
        &self.completed
    }

    /// Seconds since the start.
    pub fn elapsed_s(&self) -> u64 {
        self.t_s
    }

    /// Advances every line one second; returns each line's measurements.
    pub fn step(&mut self) -> Vec<Tick> {
        self.t_s += 1;
        let t = self.t_s;
        while self.unreleased.last().is_some_and(|o| o.release_s <= t) {
            let Some(o) = self.unreleased.pop() else {
                break;
            };
            self.released += 1;
            // The order system without agents: the line with the least work queued.
            let line = self
                .lines
                .iter_mut()
                .min_by(|a, b| a.work().total_cmp(&b.work()));
            if let Some(line) = line {
                line.insert(Job {
                    order: o.id,
                    remaining: o.bottles,
                    due_s: o.due_s,
                    started: false,
                });
            }
        }
        let mut ticks = Vec::with_capacity(self.lines.len());
        for line in &mut self.lines {
            ticks.push(line.sim.step());
            let truth = line.sim.truth();
            if truth.pump_failed && !truth.in_maintenance && line.repair_at_s.is_none() {
                line.failures += 1;
                line.planned = false;
                line.repair_at_s = Some(t + self.options.repair_delay_s);
            }
            if line.repair_at_s.is_some_and(|at| t >= at) {
                line.repair_at_s = None;
                // The crew's repair: never refused by the simulator.
                let _ = line.sim.apply(&PlantCommand::Maintenance);
            }
            let truth = line.sim.truth();
            if truth.pump_failed || truth.in_maintenance || line.repair_at_s.is_some() {
                if line.planned && !truth.pump_failed {
                    line.planned_down_s += 1;
                } else {
                    line.unplanned_down_s += 1;
                }
            } else {
                line.planned = false;
            }
            let mut good = (truth.good_bottles - line.last_good).max(0.0);
            line.last_good = truth.good_bottles;
            while good > 0.0 {
                let Some(job) = line.queue.front_mut() else {
                    line.unassigned_bottles += good;
                    break;
                };
                job.started = true;
                let used = good.min(job.remaining);
                job.remaining -= used;
                line.order_bottles += used;
                good -= used;
                if job.remaining <= 1e-9
                    && let Some(done) = line.queue.pop_front()
                {
                    self.completed.push(Completed {
                        order: done.order,
                        line: line.id.clone(),
                        done_s: t,
                        due_s: done.due_s,
                    });
                }
            }
        }
        ticks
    }

    /// Applies an approved command to line `line`.
    pub fn apply(&mut self, line: &str, cmd: &PlantCommand) -> Result<(), SimError> {
        let Some(to) = self.lines.iter().position(|l| l.id == line) else {
            return Err(SimError::UnknownLine(line.to_string()));
        };
        match cmd {
            PlantCommand::TakeOrder { order, from_line } => {
                let err = |why: String| SimError::Order {
                    order: order.clone(),
                    why,
                };
                let from = self
                    .lines
                    .iter()
                    .position(|l| l.id == *from_line)
                    .ok_or_else(|| err(format!("the site has no line {from_line:?}")))?;
                if from == to {
                    return Err(err(format!("already on {line}")));
                }
                let at = self
                    .lines
                    .get(from)
                    .and_then(|l| l.queue.iter().position(|j| j.order == *order))
                    .ok_or_else(|| {
                        err(format!(
                            "not on {from_line} (filled, moved or never released)"
                        ))
                    })?;
                let job = self
                    .lines
                    .get_mut(from)
                    .and_then(|l| l.queue.remove(at))
                    .ok_or_else(|| err(format!("not on {from_line}")))?;
                if let Some(dest) = self.lines.get_mut(to) {
                    dest.insert(Job {
                        started: false,
                        ..job
                    });
                }
                Ok(())
            }
            PlantCommand::Maintenance => {
                let l = self
                    .lines
                    .get_mut(to)
                    .ok_or_else(|| SimError::UnknownLine(line.to_string()))?;
                let truth = l.sim.truth();
                if !truth.pump_failed && !truth.in_maintenance {
                    l.planned = true;
                    l.planned_maintenance += 1;
                }
                l.sim.apply(cmd)
            }
            other => self
                .lines
                .get_mut(to)
                .ok_or_else(|| SimError::UnknownLine(line.to_string()))?
                .sim
                .apply(other),
        }
    }

    /// The KPIs so far.
    pub fn kpis(&self) -> SiteKpis {
        let t = self.t_s;
        let completed_late = self.completed.iter().filter(|c| c.done_s > c.due_s).count();
        let mut lateness_s: u64 = self
            .completed
            .iter()
            .map(|c| c.done_s.saturating_sub(c.due_s))
            .sum();
        let mut open_overdue = 0;
        for j in self.lines.iter().flat_map(|l| l.queue.iter()) {
            if j.due_s < t {
                open_overdue += 1;
                lateness_s += t - j.due_s;
            }
        }
        let unplanned: u64 = self.lines.iter().map(|l| l.unplanned_down_s).sum();
        SiteKpis {
            hours: t as f64 / 3600.0,
            orders_released: self.released,
            orders_completed: self.completed.len(),
            completed_late,
            open_overdue,
            orders_late: completed_late + open_overdue,
            lateness_h: lateness_s as f64 / 3600.0,
            order_bottles: self.lines.iter().map(|l| l.order_bottles).sum(),
            failures: self.lines.iter().map(|l| l.failures).sum(),
            planned_maintenance: self.lines.iter().map(|l| l.planned_maintenance).sum(),
            unplanned_down_h: unplanned as f64 / 3600.0,
            planned_down_h: self.lines.iter().map(|l| l.planned_down_s).sum::<u64>() as f64
                / 3600.0,
            bottles_lost_to_failures: unplanned as f64 / 3600.0 * NOMINAL_BOTTLES_PER_H,
        }
    }
}
