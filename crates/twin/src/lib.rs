//! The twin: current state and bounded history per signal, and the plant's physics
//! relations evaluated continuously as residuals: mass balances with a CUSUM test, control
//! loops against their tolerance once settled after a setpoint change.
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
    /// Samples that arrived older than the newest one held (kept out of the history).
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
    /// Smallest noise assumed, in residual units.
    pub sigma_floor: f64,
}

impl Default for CusumConfig {
    fn default() -> Self {
        CusumConfig {
            k: 0.5,
            h: 8.0,
            warmup: 20,
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
    warmup: Vec<f64>,
    sigma: Option<f64>,
    pos: f64,
    neg: f64,
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
    signals: HashMap<String, SignalState>,
    relations: Vec<RelationState>,
    setpoints: HashMap<String, SetpointState>,
    /// The control loops are not judged until then (the line is stopped: `i64::MAX`).
    loops_suspended_until: Option<i64>,
    history_len: usize,
    cusum: CusumConfig,
}

impl Twin {
    pub fn new(plant: Arc<Plant>, history_len: usize, cusum: CusumConfig) -> Twin {
        let signals = plant
            .signals
            .iter()
            .map(|s| (s.id.clone(), SignalState::default()))
            .collect();
        let relations = plant
            .relations
            .iter()
            .map(|r| RelationState {
                id: r.id.clone(),
                kind: r.kind.clone(),
                signals: r.signals().into_iter().map(str::to_string).collect(),
                next_end_ms: None,
                warmup: Vec::new(),
                sigma: None,
                pos: 0.0,
                neg: 0.0,
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

    /// Applies an accepted sample. Returns false if it was older than the newest held.
    pub fn update(&mut self, s: &Sample) -> bool {
        let Some(state) = self.signals.get_mut(&s.signal) else {
            return false;
        };
        if state.last.is_some_and(|p| s.t_ms <= p.t_ms) {
            state.out_of_order += 1;
            return false;
        }
        let p = Point {
            t_ms: s.t_ms,
            value: s.value,
        };
        state.last = Some(p);
        state.provenance = Some(s.provenance.clone());
        state.history.push_back(p);
        while state.history.len() > self.history_len {
            state.history.pop_front();
        }
        true
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

    /// The newest time for which every signal has a value.
    pub fn complete_until(&self) -> Option<i64> {
        self.signals
            .values()
            .map(|s| s.last.map(|p| p.t_ms))
            .min()
            .flatten()
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
        let mean = |id: &str| -> Option<f64> {
            let h = &self.signals.get(id)?.history;
            let start = h.partition_point(|p| p.t_ms <= t0);
            let (n, sum) = h
                .range(start..)
                .take_while(|p| p.t_ms <= t1)
                .fold((0usize, 0.0), |(n, s), p| (n + 1, s + p.value));
            (n > 0).then(|| sum / n as f64)
        };
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
        let sigma = match r.sigma {
            Some(s) => s,
            None => {
                r.warmup.push(residual);
                if r.warmup.len() < cfg.warmup {
                    return None;
                }
                let s = robust_sigma(&r.warmup).max(cfg.sigma_floor);
                r.sigma = Some(s);
                s
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
            signals: r.signals.clone(),
        };
        if alarm {
            r.pos = 0.0;
            r.neg = 0.0;
        }
        Some(out)
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
    use ingest::Trust;

    fn sample(signal: &str, t_ms: i64, value: f64) -> Sample {
        Sample {
            signal: signal.into(),
            t_ms,
            value,
            provenance: Arc::new(Provenance {
                device: "gw".into(),
                channel: "test".into(),
                transport: "test".into(),
                source: None,
                signed: true,
                seal: None,
                seq: 0,
                received_ms: 0,
                trust: Trust::Verified,
            }),
        }
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
}
