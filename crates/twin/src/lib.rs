//! The twin: current state and bounded history per signal, and the plant's physics
//! relations evaluated continuously as residuals: mass balances with a CUSUM test, control
//! loops against their tolerance once settled after a setpoint change, heat exchangers'
//! effectiveness by the trend of their energy balance.
//!
//! The twin does no I/O and reads no clock: samples carry their time, and relations are
//! evaluated as far as the data allows.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use ingest::{Provenance, Sample};
use plant_model::{Plant, PlantCommand, RelationKind};
use serde::Serialize;

/// Points kept per signal by default (one hour at 1 Hz).
pub const DEFAULT_HISTORY: usize = 3600;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    pub t_ms: i64,
    pub value: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SignalState {
    pub last: Option<Point>,
    pub provenance: Option<Arc<Provenance>>,
    #[serde(skip)]
    pub history: VecDeque<Point>,
    /// Samples that arrived no newer than the newest one held: a frame overtaken by a
    /// newer one within ingest's replay window. Each goes into the history at its time
    /// (one at a time already held is a duplicate and is dropped); the newest value and
    /// the detectors do not see it.
    pub out_of_order: u64,
}

/// One evaluation of a relation over one window.
#[derive(Debug, Clone, Serialize)]
pub struct Residual {
    pub relation: String,
    pub t_ms: i64,
    /// Measured minus predicted (for a mass balance: metres of level per window).
    pub residual: f64,
    /// Residual over its estimated noise.
    pub z: f64,
    pub cusum_pos: f64,
    pub cusum_neg: f64,
    /// The CUSUM crossed its threshold in this window (a control loop: beyond its
    /// tolerance).
    pub alarm: bool,
    /// A control loop's actuator averaged within 2 % of an end of its instrument range
    /// over the window.
    pub actuator_saturated: bool,
    /// What the relation estimates over the window, where it estimates something (a heat
    /// balance: the exchanger's effectiveness).
    pub estimate: Option<f64>,
    /// At the current trend, hours until the relation's actuator reaches the end of its
    /// range (a heat balance losing effectiveness: its steam valve fully open, after
    /// which the temperature falls).
    pub actuator_end_in_h: Option<f64>,
    /// The signals whose values the relation used.
    pub signals: Vec<String>,
}

/// CUSUM tuning, in units of the residual's standard deviation.
#[derive(Debug, Clone, Copy)]
pub struct CusumConfig {
    /// Allowance (slack) per window.
    pub k: f64,
    /// Decision threshold.
    pub h: f64,
    /// Windows used to estimate the residual's noise before testing.
    pub warmup: usize,
    /// Windows over which that estimate keeps being refined while the relation is tested,
    /// until its first alarm: twenty windows alone now and then put the noise at less
    /// than half of what it is (a normal run's window read as 8 sigma); sixty rarely do.
    pub refine: usize,
    /// Smallest noise assumed, in residual units.
    pub sigma_floor: f64,
}

impl Default for CusumConfig {
    fn default() -> Self {
        CusumConfig {
            k: 0.5,
            h: 8.0,
            warmup: 20,
            refine: 60,
            sigma_floor: 0.001,
        }
    }
}

#[derive(Debug, Clone)]
struct RelationState {
    id: String,
    kind: RelationKind,
    signals: Vec<String>,
    /// End of the last evaluated window.
    next_end_ms: Option<i64>,
    /// The residuals the noise estimate is taken from: the warm-up's, then those of the
    /// windows tested while it is refined.
    noise_residuals: Vec<f64>,
    sigma: Option<f64>,
    /// The relation has raised an alarm: its noise estimate is final.
    alarmed: bool,
    pos: f64,
    neg: f64,
    /// A heat balance: the effectiveness of each window within the trend's span, and the
    /// previous window's mean outlet temperature (for the heat the holdup stored).
    trend: VecDeque<(i64, f64)>,
    prev_out: Option<f64>,
}

/// How long after a maintenance command the control loops are not judged (the pump stops
/// for two hours, then the loops settle).
const MAINTENANCE_SUSPENDS_MS: i64 = 3 * 3_600_000;

/// A setpoint as the twin knows it: its value and when it last changed (None: not since
/// the data started, which counts as a change).
#[derive(Debug, Clone, Copy)]
struct SetpointState {
    value: f64,
    changed_ms: Option<i64>,
}

pub struct Twin {
    plant: Arc<Plant>,
    /// Hashed with foldhash (seeded per process) rather than SipHash: looked up for every
    /// sample, its keys are the plant file's ids, and a lookup never adds one.
    signals: foldhash::HashMap<String, SignalState>,
    relations: Vec<RelationState>,
    setpoints: HashMap<String, SetpointState>,
    /// The control loops are not judged until then (the line is stopped: `i64::MAX`).
    loops_suspended_until: Option<i64>,
    history_len: usize,
    cusum: CusumConfig,
    complete: Complete,
}

/// How far every signal's data reaches, kept up as samples arrive, so that asking
/// ([`Twin::complete_until`], once a frame) does not visit every signal: only when the
/// last signal at the oldest time moves on is the oldest time looked for again.
#[derive(Debug, Clone, Copy)]
struct Complete {
    /// Signals without data yet (while any, no time is complete).
    unseen: usize,
    /// The oldest of the signals' newest times, and how many signals are at it; 0 when
    /// it has to be found again.
    min_ms: i64,
    at_min: usize,
}

impl Twin {
    pub fn new(plant: Arc<Plant>, history_len: usize, cusum: CusumConfig) -> Twin {
        let signals: foldhash::HashMap<String, SignalState> = plant
            .signals
            .iter()
            .map(|s| (s.id.clone(), SignalState::default()))
            .collect();
        let complete = Complete {
            unseen: signals.len(),
            min_ms: i64::MIN,
            at_min: 0,
        };
        let relations = plant
            .relations
            .iter()
            .map(|r| RelationState {
                id: r.id.clone(),
                kind: r.kind.clone(),
                signals: r.signals().into_iter().map(str::to_string).collect(),
                next_end_ms: None,
                noise_residuals: Vec::new(),
                sigma: None,
                alarmed: false,
                pos: 0.0,
                neg: 0.0,
                trend: VecDeque::new(),
                prev_out: None,
            })
            .collect();
        let setpoints = plant
            .setpoints
            .iter()
            .map(|s| {
                (
                    s.id.clone(),
                    SetpointState {
                        value: s.initial,
                        changed_ms: None,
                    },
                )
            })
            .collect();
        Twin {
            plant,
            signals,
            relations,
            setpoints,
            loops_suspended_until: None,
            history_len: history_len.max(2),
            cusum,
            complete,
        }
    }

    pub fn plant(&self) -> &Plant {
        &self.plant
    }

    /// A command the plant was sent at `t_ms`: a setpoint's new value restarts its loop's
    /// settling time; a line stop suspends every loop until the line starts and settles,
    /// a maintenance for three hours.
    pub fn note_command(&mut self, command: &PlantCommand, t_ms: i64) {
        match command {
            PlantCommand::SetSetpoint { setpoint, value } => {
                if let Some(s) = self.setpoints.get_mut(setpoint) {
                    s.value = *value;
                    s.changed_ms = Some(t_ms);
                }
            }
            PlantCommand::StopLine => self.loops_suspended_until = Some(i64::MAX),
            PlantCommand::StartLine => {
                for s in self.setpoints.values_mut() {
                    s.changed_ms = Some(t_ms);
                }
                self.loops_suspended_until = Some(t_ms);
            }
            PlantCommand::Maintenance => {
                let until = t_ms + MAINTENANCE_SUSPENDS_MS;
                self.loops_suspended_until =
                    Some(self.loops_suspended_until.map_or(until, |u| u.max(until)));
                for s in self.setpoints.values_mut() {
                    s.changed_ms = Some(until);
                }
            }
            PlantCommand::TakeOrder { .. } => {}
        }
    }

    /// The setpoint's value as last commanded (its initial value before any command).
    pub fn setpoint(&self, id: &str) -> Option<f64> {
        self.setpoints.get(id).map(|s| s.value)
    }

    /// Applies an accepted sample. Returns false if it was no newer than the newest held
    /// (see [`SignalState::out_of_order`]).
    pub fn update(&mut self, s: &Sample) -> bool {
        let Some(state) = self.signals.get_mut(&*s.signal) else {
            return false;
        };
        if state.last.is_some_and(|p| s.t_ms <= p.t_ms) {
            state.out_of_order += 1;
            let h = &mut state.history;
            let at = h.partition_point(|p| p.t_ms < s.t_ms);
            let duplicate = h.get(at).is_some_and(|p| p.t_ms == s.t_ms);
            let evicted_at_once = at == 0 && h.len() >= self.history_len;
            if !duplicate && !evicted_at_once {
                // Full, the oldest point makes room first (within the room allocated).
                let at = if h.len() >= self.history_len {
                    h.pop_front();
                    at.saturating_sub(1)
                } else {
                    at
                };
                h.insert(
                    at,
                    Point {
                        t_ms: s.t_ms,
                        value: s.value,
                    },
                );
            }
            return false;
        }
        let p = Point {
            t_ms: s.t_ms,
            value: s.value,
        };
        let c = &mut self.complete;
        match state.last {
            None => {
                c.unseen = c.unseen.saturating_sub(1);
                c.at_min = 0;
            }
            Some(prev) if prev.t_ms == c.min_ms => c.at_min = c.at_min.saturating_sub(1),
            Some(_) => {}
        }
        state.last = Some(p);
        state.provenance = Some(s.provenance.clone());
        if state.history.capacity() == 0 {
            // The history's whole length at once, not doubling into it: 3,600 points
            // would otherwise take the room of 4,096.
            state.history.reserve_exact(self.history_len);
        }
        while state.history.len() >= self.history_len {
            state.history.pop_front();
        }
        state.history.push_back(p);
        true
    }

    /// The heap the twin's signals hold, in bytes: each one's name, state and history
    /// (as allocated, full or not), and the map that finds them. Relations and setpoints
    /// are not counted (a few per asset); neither is the allocator's own bookkeeping.
    pub fn signal_memory_bytes(&self) -> usize {
        let entry = std::mem::size_of::<(String, SignalState)>();
        let map = self.signals.capacity() * (entry + 1);
        map + self
            .signals
            .iter()
            .map(|(id, s)| id.capacity() + s.history.capacity() * std::mem::size_of::<Point>())
            .sum::<usize>()
    }

    /// Samples accepted by ingest that arrived no newer than their signal's newest value
    /// (put into its history at their time, see [`SignalState::out_of_order`]), over
    /// every signal.
    pub fn out_of_order(&self) -> u64 {
        self.signals.values().map(|s| s.out_of_order).sum()
    }

    pub fn signal(&self, id: &str) -> Option<&SignalState> {
        self.signals.get(id)
    }

    pub fn value(&self, id: &str) -> Option<f64> {
        self.signals.get(id).and_then(|s| s.last).map(|p| p.value)
    }

    pub fn signals(&self) -> impl Iterator<Item = (&String, &SignalState)> {
        self.signals.iter()
    }

    /// The newest time for which every signal has a value (none while a signal has none).
    /// Constant time, except after the last signal at the oldest time has moved on, when
    /// every signal is visited once to find the next oldest.
    pub fn complete_until(&mut self) -> Option<i64> {
        let c = &mut self.complete;
        if c.unseen > 0 {
            return None;
        }
        if c.at_min == 0 {
            let mut oldest: Option<(i64, usize)> = None;
            for t in self.signals.values().filter_map(|s| s.last.map(|p| p.t_ms)) {
                oldest = match oldest {
                    Some((m, n)) if t == m => Some((m, n + 1)),
                    Some((m, n)) if t > m => Some((m, n)),
                    _ => Some((t, 1)),
                };
            }
            let (min_ms, at_min) = oldest?;
            c.min_ms = min_ms;
            c.at_min = at_min;
        }
        Some(c.min_ms)
    }

    /// Evaluates every relation window that the data now covers.
    pub fn evaluate_relations(&mut self) -> Vec<Residual> {
        let mut out = Vec::new();
        for i in 0..self.relations.len() {
            while let Some(r) = self.relations.get(i) {
                let window_ms = i64::from(r.kind.window_s()) * 1000;
                let ready_until = r
                    .signals
                    .iter()
                    .map(|s| self.signals.get(s).and_then(|st| st.last).map(|p| p.t_ms))
                    .min()
                    .flatten();
                let Some(ready_until) = ready_until else {
                    break;
                };
                let end = match r.next_end_ms {
                    Some(e) => e,
                    None => {
                        // Start at the first window boundary after the oldest data.
                        let start = r
                            .signals
                            .iter()
                            .filter_map(|s| self.signals.get(s).and_then(|st| st.history.front()))
                            .map(|p| p.t_ms)
                            .max()
                            .unwrap_or(ready_until);
                        let end = (start / window_ms + 1) * window_ms + window_ms;
                        if let Some(r) = self.relations.get_mut(i) {
                            r.next_end_ms = Some(end);
                        }
                        end
                    }
                };
                if ready_until < end {
                    break;
                }
                if let Some(r) = self.relations.get_mut(i) {
                    r.next_end_ms = Some(end + window_ms);
                }
                let tested = match self.relations.get(i).map(|r| &r.kind) {
                    Some(RelationKind::MassBalance { .. }) => self
                        .mass_balance(i, end - window_ms, end)
                        .and_then(|v| self.test(i, end, v)),
                    Some(RelationKind::Tracking { .. }) => self.tracking(i, end - window_ms, end),
                    Some(RelationKind::HeatBalance { .. }) => {
                        self.heat_balance(i, end - window_ms, end)
                    }
                    None => None,
                };
                if let Some(res) = tested {
                    out.push(res);
                }
            }
        }
        out
    }

    /// A control loop over `(t0, t1]`: the mean of its measured value minus its setpoint,
    /// an alarm beyond the tolerance. None while the loop settles after a change, while it
    /// is suspended, or when data is missing.
    fn tracking(&mut self, i: usize, t0: i64, t1: i64) -> Option<Residual> {
        let r = self.relations.get(i)?;
        let RelationKind::Tracking {
            measured,
            setpoint,
            actuator,
            tolerance,
            settle_s,
            ..
        } = &r.kind
        else {
            return None;
        };
        if self.loops_suspended_until.is_some_and(|u| t1 <= u) {
            return None;
        }
        let sp = self.setpoints.get_mut(setpoint)?;
        // The data's start counts as a change: the loop may be settling when it begins.
        let changed = *sp.changed_ms.get_or_insert(t0);
        if t0 < changed + i64::from(*settle_s) * 1000 {
            return None;
        }
        let target = sp.value;
        let mean = |id: &str| self.window_mean(id, t0, t1);
        let error = mean(measured)? - target;
        let actuator_saturated = actuator.as_deref().is_some_and(|a| {
            match (mean(a), self.plant.signal(a).map(|s| s.range)) {
                (Some(v), Some([lo, hi])) => {
                    let margin = 0.02 * (hi - lo);
                    v <= lo + margin || v >= hi - margin
                }
                _ => false,
            }
        });
        Some(Residual {
            relation: r.id.clone(),
            t_ms: t1,
            residual: error,
            z: error / tolerance,
            cusum_pos: 0.0,
            cusum_neg: 0.0,
            alarm: error.abs() > *tolerance,
            actuator_saturated,
            estimate: None,
            actuator_end_in_h: None,
            signals: r.signals.clone(),
        })
    }

    /// The mean of a signal's values in `(t0, t1]`; None without any.
    fn window_mean(&self, id: &str, t0: i64, t1: i64) -> Option<f64> {
        let h = &self.signals.get(id)?.history;
        let start = h.partition_point(|p| p.t_ms <= t0);
        let (n, sum) = h
            .range(start..)
            .take_while(|p| p.t_ms <= t1)
            .fold((0usize, 0.0), |(n, s), p| (n + 1, s + p.value));
        (n > 0).then(|| sum / n as f64)
    }

    /// A heat exchanger over `(t0, t1]`: the window's effectiveness joins the trend; once
    /// the trend spans three quarters of its length, its slope (per hour, Theil-Sen: a
    /// window or two disturbed by a spike or a transient do not move it) is the residual.
    /// None while the exchanger idles or the loops are suspended (the trend then starts
    /// again: a restart's transients are not fouling), or when data is missing.
    fn heat_balance(&mut self, i: usize, t0: i64, t1: i64) -> Option<Residual> {
        let r = self.relations.get(i)?;
        let RelationKind::HeatBalance {
            duty,
            flow,
            temp_in,
            temp_out,
            heat_capacity_kj_per_m3k,
            ambient,
            loss_kw_per_k,
            holdup_kj_per_k,
            actuator,
            max_change_per_h,
            trend_s,
            ..
        } = &r.kind
        else {
            return None;
        };
        let mean = |id: &str| self.window_mean(id, t0, t1);
        // Below 2 % of its instrument's span, a duty or a flow is an idle exchanger.
        let running = |id: &str, v: f64| {
            self.plant
                .signal(id)
                .is_some_and(|s| v > s.range[0] + 0.02 * (s.range[1] - s.range[0]))
        };
        let means = (mean(duty), mean(flow), mean(temp_in), mean(temp_out));
        let ambient_t = ambient.as_deref().map(mean);
        let suspended = self.loops_suspended_until.is_some_and(|u| t1 <= u);
        let actuator_now = actuator.as_deref().and_then(|a| {
            let s = self.plant.signal(a)?;
            Some(((mean(a)? - s.range[0]) / (s.range[1] - s.range[0])).clamp(0.0, 1.0))
        });
        let (c, loss_k, holdup, max_change) = (
            *heat_capacity_kj_per_m3k,
            *loss_kw_per_k,
            *holdup_kj_per_k,
            *max_change_per_h,
        );
        let trend_ms = i64::from(*trend_s) * 1000;
        let (Some(q), Some(fl), Some(t_in), Some(t_out), None | Some(Some(_))) =
            (means.0, means.1, means.2, means.3, ambient_t)
        else {
            // A window without data: the next one has no outlet temperature to start
            // its holdup's change from.
            if let Some(r) = self.relations.get_mut(i) {
                r.prev_out = None;
            }
            return None;
        };
        let ambient_t = ambient_t.flatten();
        let idle = suspended || !running(duty, q) || !running(flow, fl);
        let r = self.relations.get_mut(i)?;
        if idle {
            r.trend.clear();
            r.prev_out = None;
            return None;
        }
        // The first window after a start only gives the next its holdup's starting point.
        let prev_out = r.prev_out.replace(t_out)?;
        let window_h = (t1 - t0) as f64 / 3_600_000.0;
        let taken_kw = fl / 3600.0 * c * (t_out - t_in);
        let lost_kw = ambient_t.map_or(0.0, |a| loss_k * (t_out - a));
        let stored_kw = holdup * (t_out - prev_out) / (window_h * 3600.0);
        let effectiveness = (taken_kw + lost_kw + stored_kw) / q;
        if !effectiveness.is_finite() {
            return None;
        }
        r.trend.push_back((t1, effectiveness));
        while r.trend.front().is_some_and(|&(t, _)| t <= t1 - trend_ms) {
            r.trend.pop_front();
        }
        let span = match (r.trend.front(), r.trend.back()) {
            (Some(a), Some(b)) => b.0 - a.0,
            _ => 0,
        };
        if r.trend.len() < 4 || span * 4 < trend_ms * 3 {
            return None;
        }
        let points = r.trend.make_contiguous();
        let slope = theil_sen_per_h(points);
        // The forecast takes the faster of the whole trend's fall and its last quarter's
        // (at least four windows): when the fall has just begun, the whole trend still
        // holds the level stretch before it and would put the end far too late.
        let recent = points.len().saturating_sub((points.len() / 4).max(4));
        let fall = slope.min(points.get(recent..).map_or(slope, theil_sen_per_h));
        let actuator_end_in_h = match actuator_now {
            Some(v) if slope < 0.0 && fall < 0.0 => Some(effectiveness * (1.0 - v) / -fall),
            _ => None,
        };
        Some(Residual {
            relation: r.id.clone(),
            t_ms: t1,
            residual: slope,
            z: slope / max_change,
            cusum_pos: 0.0,
            cusum_neg: 0.0,
            alarm: slope.abs() > max_change,
            actuator_saturated: false,
            estimate: Some(effectiveness),
            actuator_end_in_h,
            signals: r.signals.clone(),
        })
    }

    /// Measured minus predicted level change over `(t0, t1]`; None when data is missing.
    fn mass_balance(&self, i: usize, t0: i64, t1: i64) -> Option<f64> {
        let r = self.relations.get(i)?;
        let RelationKind::MassBalance {
            level,
            inflows,
            outflows,
            area_m2,
            ..
        } = &r.kind
        else {
            return None;
        };
        let at = |id: &str, t: i64| -> Option<f64> {
            let h = &self.signals.get(id)?.history;
            let idx = h.partition_point(|p| p.t_ms < t);
            h.get(idx).filter(|p| p.t_ms == t).map(|p| p.value)
        };
        let integral_m3 = |id: &str| -> Option<f64> {
            let h = &self.signals.get(id)?.history;
            let start = h.partition_point(|p| p.t_ms <= t0);
            let prev = start.checked_sub(1).and_then(|j| h.get(j))?;
            let mut last_t = prev.t_ms;
            let mut acc = 0.0;
            for p in h.range(start..).take_while(|p| p.t_ms <= t1) {
                acc += p.value * (p.t_ms - last_t) as f64 / 3_600_000.0;
                last_t = p.t_ms;
            }
            // A gap longer than the window's tail means missing data.
            if t1 - last_t > 5_000 { None } else { Some(acc) }
        };
        let dl = at(level, t1)? - at(level, t0)?;
        let mut net = 0.0;
        for q in inflows {
            net += integral_m3(q)?;
        }
        for q in outflows {
            net -= integral_m3(q)?;
        }
        Some(dl - net / area_m2)
    }

    fn test(&mut self, i: usize, t_ms: i64, residual: f64) -> Option<Residual> {
        let cfg = self.cusum;
        let r = self.relations.get_mut(i)?;
        let (sigma, refining) = match r.sigma {
            Some(s) => (s, !r.alarmed && r.noise_residuals.len() < cfg.refine),
            None => {
                r.noise_residuals.push(residual);
                if r.noise_residuals.len() < cfg.warmup {
                    return None;
                }
                let s = robust_sigma(&r.noise_residuals).max(cfg.sigma_floor);
                r.sigma = Some(s);
                (s, false)
            }
        };
        let z = residual / sigma;
        r.pos = (r.pos + z - cfg.k).max(0.0);
        r.neg = (r.neg - z - cfg.k).max(0.0);
        let alarm = r.pos > cfg.h || r.neg > cfg.h;
        let out = Residual {
            relation: r.id.clone(),
            t_ms,
            residual,
            z,
            cusum_pos: r.pos,
            cusum_neg: r.neg,
            alarm,
            actuator_saturated: false,
            estimate: None,
            actuator_end_in_h: None,
            signals: r.signals.clone(),
        };
        if alarm {
            r.pos = 0.0;
            r.neg = 0.0;
            r.alarmed = true;
        } else if refining {
            // Tested against the estimate so far, then part of it.
            r.noise_residuals.push(residual);
            r.sigma = Some(robust_sigma(&r.noise_residuals).max(cfg.sigma_floor));
        }
        Some(out)
    }
}

/// The median of the slopes between every two points `(t_ms, value)`, per hour (Theil
/// and Sen): up to 29 % of the points may be outliers without moving it far.
fn theil_sen_per_h(points: &[(i64, f64)]) -> f64 {
    let mut slopes = Vec::with_capacity(points.len() * points.len() / 2);
    for (k, a) in points.iter().enumerate() {
        for b in points.iter().skip(k + 1) {
            if b.0 != a.0 {
                slopes.push((b.1 - a.1) / ((b.0 - a.0) as f64 / 3_600_000.0));
            }
        }
    }
    slopes.sort_by(f64::total_cmp);
    let n = slopes.len();
    match (slopes.get(n.saturating_sub(1) / 2), slopes.get(n / 2)) {
        (Some(a), Some(b)) => (a + b) / 2.0,
        _ => 0.0,
    }
}

/// Standard deviation estimated from the median absolute deviation.
fn robust_sigma(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let med = v.get(v.len() / 2).copied().unwrap_or(0.0);
    let mut dev: Vec<f64> = v.iter().map(|x| (x - med).abs()).collect();
    dev.sort_by(f64::total_cmp);
    1.4826 * dev.get(dev.len() / 2).copied().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]

    use super::*;

    fn sample(signal: &str, t_ms: i64, value: f64) -> Sample {
        Sample {
            signal: signal.into(),
            t_ms,
            value,
            provenance: Arc::new(Provenance::verified_for_test("gw")),
        }
    }

    /// `complete_until`, kept up as samples arrive, against a look at every signal, over
    /// sequences that start with signals unseen, move them in and out of order, leave
    /// one behind and let it catch up.
    #[test]
    fn complete_until_is_the_oldest_newest_time_after_any_sequence() {
        let plant = Arc::new(Plant::reference());
        let ids: Vec<String> = plant.signals.iter().map(|s| s.id.clone()).collect();
        let scan = |twin: &Twin| {
            twin.signals
                .values()
                .map(|s| s.last.map(|p| p.t_ms))
                .min()
                .flatten()
        };
        for seed in 1..=20u64 {
            let mut twin = Twin::new(plant.clone(), 50, CusumConfig::default());
            let mut x = seed;
            let mut next = |n: u64| {
                // xorshift: a fixed sequence per seed.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            for step in 0..3_000i64 {
                let k = next(ids.len() as u64) as usize;
                // Mostly forward in time; now and then a step back (out of order) or a
                // jump far ahead; one signal only every few hundred steps.
                let t = match next(10) {
                    0 => step * 1000 - 5_000,
                    1 => step * 1000 + 60_000,
                    _ => step * 1000,
                };
                let k = match k {
                    _ if step % 300 == 299 => 0,
                    0 => 1,
                    k => k,
                };
                twin.update(&sample(&ids[k], t, 1.0));
                if next(3) == 0 {
                    assert_eq!(
                        twin.complete_until(),
                        scan(&twin),
                        "seed {seed} step {step}"
                    );
                }
            }
            assert_eq!(twin.complete_until(), scan(&twin), "seed {seed} at the end");
            assert!(
                twin.complete_until().is_some(),
                "seed {seed}: every signal was seen"
            );
        }
        // No signal seen yet: nothing is complete.
        let mut twin = Twin::new(plant, 50, CusumConfig::default());
        assert_eq!(twin.complete_until(), None);
    }

    /// Residuals of a relation's windows: 20 unusually quiet ones, 40 of its real noise,
    /// then one at 3.5 of that noise. Returns whether any window alarmed.
    fn quiet_start_then_noise(cusum: CusumConfig) -> bool {
        let plant = Arc::new(Plant::reference());
        let mut twin = Twin::new(plant, DEFAULT_HISTORY, cusum);
        let i = twin
            .relations
            .iter()
            .position(|r| r.id == "tank.mass_balance")
            .unwrap();
        let quiet = (0..20).map(|k| 0.001 * ((k % 5) as f64 - 2.0) / 2.0);
        let noise = (0..40).map(|k| 0.003 * ((k % 7) as f64 - 3.0) / 2.0);
        let mut alarmed = false;
        for (k, residual) in quiet.chain(noise).chain([0.0105]).enumerate() {
            if let Some(r) = twin.test(i, k as i64 * 60_000, residual) {
                alarmed |= r.alarm;
            }
        }
        alarmed
    }

    #[test]
    fn the_noise_estimate_keeps_learning_until_sixty_windows() {
        // Fixed after the first twenty windows, the estimate takes the quiet start for
        // the relation's noise, and normal windows raise an alarm ...
        let fixed = CusumConfig {
            refine: 20,
            ..CusumConfig::default()
        };
        assert!(quiet_start_then_noise(fixed));
        // ... refined over sixty, it learns the real noise while it tests.
        assert!(!quiet_start_then_noise(CusumConfig::default()));
    }

    #[test]
    fn a_late_sample_goes_into_the_history_at_its_time() {
        let plant = Arc::new(Plant::reference());
        let mut twin = Twin::new(plant, 3, CusumConfig::default());
        assert!(twin.update(&sample("tank.level", 1000, 1.0)));
        assert!(twin.update(&sample("tank.level", 3000, 3.0)));
        // Overtaken by a newer frame: not the newest value, but kept in order ...
        assert!(!twin.update(&sample("tank.level", 2000, 2.0)));
        // ... and a time already held is a duplicate.
        assert!(!twin.update(&sample("tank.level", 2000, 9.0)));
        let st = twin.signal("tank.level").unwrap();
        let times: Vec<(i64, f64)> = st.history.iter().map(|p| (p.t_ms, p.value)).collect();
        assert_eq!(times, vec![(1000, 1.0), (2000, 2.0), (3000, 3.0)]);
        assert_eq!(st.last.unwrap().t_ms, 3000);
        // Full, the history drops its oldest for a late one, and ignores one older still.
        assert!(!twin.update(&sample("tank.level", 2500, 2.5)));
        assert!(!twin.update(&sample("tank.level", 500, 0.5)));
        let st = twin.signal("tank.level").unwrap();
        let times: Vec<i64> = st.history.iter().map(|p| p.t_ms).collect();
        assert_eq!(times, vec![2000, 2500, 3000]);
        assert_eq!(st.history.capacity(), 3);
        assert_eq!(twin.out_of_order(), 4);
    }

    #[test]
    fn a_history_keeps_its_length_in_exactly_that_room() {
        let plant = Arc::new(Plant::reference());
        let mut twin = Twin::new(plant.clone(), 100, CusumConfig::default());
        let empty = twin.signal_memory_bytes();
        for t in 0..250 {
            assert!(twin.update(&sample("tank.level", t * 1000, t as f64)));
        }
        let h = &twin.signal("tank.level").unwrap().history;
        assert_eq!(h.len(), 100);
        assert_eq!(h.capacity(), 100);
        assert_eq!(h.front().unwrap().t_ms, 150_000);
        assert_eq!(h.back().unwrap().t_ms, 249_000);
        assert_eq!(
            twin.signal_memory_bytes() - empty,
            100 * std::mem::size_of::<Point>()
        );
    }

    /// Feeds one sample a second of the product temperature and the steam valve from
    /// `from_s` to `to_s`, and returns the temperature loop's residuals.
    fn feed(twin: &mut Twin, from_s: i64, to_s: i64, temp: f64, valve: f64) -> Vec<Residual> {
        let mut out = Vec::new();
        for t in from_s..to_s {
            twin.update(&sample("past.product_temp", t * 1000, temp));
            twin.update(&sample("past.steam_valve", t * 1000, valve));
            out.extend(
                twin.evaluate_relations()
                    .into_iter()
                    .filter(|r| r.relation == "past.temperature_loop"),
            );
        }
        out
    }

    #[test]
    fn a_control_loop_is_judged_once_settled_and_not_while_stopped() {
        let plant = Arc::new(Plant::reference());
        let mut twin = Twin::new(plant, DEFAULT_HISTORY, CusumConfig::default());
        // 0.5 degC above the setpoint (75) from the start: not judged while the loop may
        // still be settling (20 min from the data's start), then a miss each window.
        let r = feed(&mut twin, 1, 1200, 75.5, 40.0);
        assert!(r.is_empty(), "{r:?}");
        let r = feed(&mut twin, 1200, 1800, 75.5, 40.0);
        assert!(
            !r.is_empty() && r.iter().all(|r| r.alarm && !r.actuator_saturated),
            "{r:?}"
        );
        assert!((r[0].residual - 0.5).abs() < 1e-9, "{r:?}");
        // The setpoint moves to where the value is: settling, then within tolerance.
        twin.note_command(
            &PlantCommand::SetSetpoint {
                setpoint: "past.temp_sp".into(),
                value: 75.5,
            },
            1_800_000,
        );
        assert_eq!(twin.setpoint("past.temp_sp"), Some(75.5));
        let r = feed(&mut twin, 1800, 3000, 75.5, 40.0);
        assert!(r.is_empty(), "{r:?}");
        let r = feed(&mut twin, 3000, 3600, 75.6, 40.0);
        assert!(!r.is_empty() && r.iter().all(|r| !r.alarm), "{r:?}");
        // Far off with the valve wide open: the loop does all it can.
        let r = feed(&mut twin, 3600, 4000, 73.0, 99.5);
        let later: Vec<_> = r.iter().filter(|r| r.t_ms > 3_600_000).collect();
        assert!(
            !later.is_empty() && later.iter().all(|r| r.alarm && r.actuator_saturated),
            "{r:?}"
        );
        // A stopped line is not judged until it has started and settled.
        twin.note_command(&PlantCommand::StopLine, 4_000_000);
        assert!(feed(&mut twin, 4000, 8000, 20.0, 0.0).is_empty());
        twin.note_command(&PlantCommand::StartLine, 8_000_000);
        assert!(feed(&mut twin, 8000, 9100, 70.0, 100.0).is_empty());
        assert!(!feed(&mut twin, 9100, 9600, 70.0, 100.0).is_empty());
    }

    /// Feeds the pasteuriser's heat balance one sample a second from `from_s` to `to_s`:
    /// 19 m3/h heated from 18 to 75 degC at 20 degC ambient, the steam supplying what
    /// that takes over `effectiveness(t_s)` (the valve at a sixth of the duty), and
    /// returns the heat balance's residuals.
    fn feed_exchanger(
        twin: &mut Twin,
        from_s: i64,
        to_s: i64,
        flow: f64,
        effectiveness: impl Fn(i64) -> f64,
    ) -> Vec<Residual> {
        let mut out = Vec::new();
        let needed_kw = flow / 3600.0 * 800.0 * (75.0 - 18.0) + 0.2 * (75.0 - 20.0);
        for t in from_s..to_s {
            let duty = needed_kw / effectiveness(t);
            for (signal, value) in [
                ("past.heat_duty", duty),
                ("pump.flow", flow),
                ("past.inlet_temp", 18.0),
                ("past.product_temp", 75.0),
                ("energy.ambient_temp", 20.0),
                ("past.steam_valve", duty / 6.0),
            ] {
                twin.update(&sample(signal, t * 1000, value));
            }
            out.extend(
                twin.evaluate_relations()
                    .into_iter()
                    .filter(|r| r.relation == "past.heat_balance"),
            );
        }
        out
    }

    #[test]
    fn a_heat_exchanger_fouling_fast_is_seen_by_its_effectiveness_trend() {
        let plant = Arc::new(Plant::reference());
        let mut twin = Twin::new(plant, DEFAULT_HISTORY, CusumConfig::default());
        // Clean and steady: no verdict until the trend spans 45 min, then steady at 1.
        let r = feed_exchanger(&mut twin, 1, 2700, 19.0, |_| 1.0);
        assert!(r.is_empty(), "{r:?}");
        let r = feed_exchanger(&mut twin, 2700, 7200, 19.0, |_| 1.0);
        assert!(!r.is_empty(), "{r:?}");
        for x in &r {
            assert!(!x.alarm && x.residual.abs() < 1e-6, "{x:?}");
            assert!((x.estimate.unwrap() - 1.0).abs() < 1e-6, "{x:?}");
        }
        // One window of the duty reading 20 % high (a spike, a transient) does not move
        // the trend.
        let r = feed_exchanger(&mut twin, 7200, 9000, 19.0, |t| {
            if (7500..7800).contains(&t) {
                1.0 / 1.2
            } else {
                1.0
            }
        });
        assert!(r.iter().all(|x| !x.alarm), "{r:?}");
        // Fouling at 5 % an hour from 9000 s: an alarm within 40 min, falling, with the
        // valve's end forecast.
        let fouling = |t: i64| 1.0 - 0.05 * (t - 9000).max(0) as f64 / 3600.0;
        let r = feed_exchanger(&mut twin, 9000, 13_200, 19.0, fouling);
        let first = r.iter().find(|x| x.alarm).expect("an alarm");
        assert!(first.t_ms <= 9_000_000 + 2_400_000, "{first:?}");
        // Its forecast already reads the fall at its rate, not the hour's average of a
        // level stretch and the fall.
        let end_at = |x: &Residual| {
            let e = x.estimate.unwrap();
            let valve = (19.0 / 3600.0 * 800.0 * 57.0 + 11.0) / e / 600.0;
            e * (1.0 - valve) / 0.05
        };
        let h = first.actuator_end_in_h.unwrap();
        assert!((h / end_at(first) - 1.0).abs() < 0.25, "{h} {first:?}");
        let last = r.last().unwrap();
        assert!(
            last.alarm && last.residual < -0.04 && last.residual > -0.06,
            "{last:?}"
        );
        // The valve (a sixth of the duty, in % of 600 kW) opens as the effectiveness
        // falls: it ends when the effectiveness has fallen to its share of today's.
        let e = last.estimate.unwrap();
        let h = last.actuator_end_in_h.unwrap();
        let valve = (19.0 / 3600.0 * 800.0 * 57.0 + 11.0) / e / 600.0;
        assert!(
            (h - e * (1.0 - valve) / -last.residual).abs() < 0.5,
            "{h} {last:?}"
        );
        // The pump stops: nothing is judged (a window is judged once the data has passed
        // its end), and the trend starts again.
        let r = feed_exchanger(&mut twin, 13_200, 14_400, 0.0, |_| 1.0);
        assert!(r.iter().all(|x| x.t_ms <= 13_200_000), "{r:?}");
        let r = feed_exchanger(&mut twin, 14_400, 14_400 + 2700, 19.0, |_| 0.8);
        assert!(r.iter().all(|x| x.t_ms <= 14_400_000), "{r:?}");
        // A rising effectiveness is an alarm too (a measurement drifting).
        let r = feed_exchanger(&mut twin, 17_100, 22_000, 19.0, |t| {
            0.8 + 0.03 * (t - 18_000).max(0) as f64 / 3600.0
        });
        assert!(
            r.last().is_some_and(|x| x.alarm && x.residual > 0.02),
            "{r:?}"
        );
    }
}
