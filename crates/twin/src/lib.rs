//! The twin: current state and bounded history per signal, and the plant's physics
//! relations evaluated continuously as residuals with a CUSUM test.
//!
//! The twin does no I/O and reads no clock: samples carry their time, and relations are
//! evaluated as far as the data allows.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use ingest::{Provenance, Sample};
use plant_model::{Plant, RelationKind};
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
    /// The CUSUM crossed its threshold in this window.
    pub alarm: bool,
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

pub struct Twin {
    plant: Arc<Plant>,
    signals: HashMap<String, SignalState>,
    relations: Vec<RelationState>,
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
        Twin {
            plant,
            signals,
            relations,
            history_len: history_len.max(2),
            cusum,
        }
    }

    pub fn plant(&self) -> &Plant {
        &self.plant
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
                let RelationKind::MassBalance { window_s, .. } = &r.kind;
                let window_ms = i64::from(*window_s) * 1000;
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
                let residual = self.mass_balance(i, end - window_ms, end);
                if let Some(r) = self.relations.get_mut(i) {
                    r.next_end_ms = Some(end + window_ms);
                }
                if let Some(res) = residual.and_then(|v| self.test(i, end, v)) {
                    out.push(res);
                }
            }
        }
        out
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
        } = &r.kind;
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
