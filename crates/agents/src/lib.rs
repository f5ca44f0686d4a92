//! Agents propose; nothing more. Each has its own signing key and a short-lived token from
//! the guard, reads the twin and the active detections, and returns signed proposals.
//!
//! - [`Maintenance`] tracks pump bearing health from the vibration trend, proposes a speed
//!   derate and a maintenance window before failure, and asks for a line stop when
//!   detections show imminent damage.
//! - [`Optimiser`] proposes setpoint changes that cut energy per good bottle while keeping
//!   product temperature and rejects inside their quality limits, choosing them by
//!   simulating candidates ahead from the twin's state.
//! - [`Scheduler`] reroutes orders between the lines of a site when a line's failure
//!   risk rises or a line stops, and proposes maintenance windows.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use detect::{Detection, DetectionKind};
use ed25519_dalek::SigningKey;
use guard::{Action, Proposal, SignedProposal, Token, sign_proposal};
use plant_model::{Plant, PlantCommand};
use plant_sim::{Forecast, Observed, Sim, SimError};
use serde::Serialize;
use twin::Twin;

pub mod scheduler;
pub use scheduler::{LineOutlook, LineStatus, QueuedJob, SCHEDULER, Scheduler};

/// An agent's identity: its name, its private key and its current token.
pub struct Identity {
    pub name: String,
    key: SigningKey,
    token: Option<Token>,
    nonce: u64,
}

impl Identity {
    pub fn new(name: &str, key: SigningKey) -> Identity {
        Identity {
            name: name.to_string(),
            key,
            token: None,
            nonce: 0,
        }
    }

    pub fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        self.key.verifying_key()
    }

    pub fn set_token(&mut self, token: Token) {
        self.token = Some(token);
    }

    /// True when the token is missing or expires within `margin_ms` (rotate before expiry).
    pub fn needs_token(&self, now_ms: i64, margin_ms: i64) -> bool {
        self.token
            .as_ref()
            .is_none_or(|t| t.expires_ms - now_ms < margin_ms)
    }

    /// The current token's value, as a thief with access to the agent's pod would copy it.
    pub fn token_value(&self) -> Option<&str> {
        self.token.as_ref().map(|t| t.value.as_str())
    }

    fn sign(
        &mut self,
        action: Action,
        reason: String,
        evidence: Vec<u64>,
        inputs: &[&str],
        now_ms: i64,
    ) -> SignedProposal {
        self.nonce += 1;
        let p = Proposal {
            agent: self.name.clone(),
            action,
            reason,
            evidence,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            created_ms: now_ms,
            nonce: format!("{}-{}-{}", self.name, now_ms, self.nonce),
        };
        let token = self
            .token
            .as_ref()
            .map(|t| t.value.clone())
            .unwrap_or_default();
        sign_proposal(&p, &token, &self.key)
    }
}

/// What every agent does.
pub trait Agent {
    fn identity(&mut self) -> &mut Identity;
    /// Looks at the plant and returns proposals (possibly none).
    fn observe(&mut self, twin: &Twin, active: &[&Detection], now_ms: i64) -> Vec<SignedProposal>;
}

fn mean_recent(twin: &Twin, id: &str, window_ms: i64) -> Option<f64> {
    let h = &twin.signal(id)?.history;
    let last = h.back()?.t_ms;
    let (sum, n) = h
        .iter()
        .rev()
        .take_while(|p| last - p.t_ms < window_ms)
        .fold((0.0, 0usize), |(s, n), p| (s + p.value, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// What the maintenance agent's trend-based proposals rest on.
const MAINTENANCE_INPUTS: &[&str] = &["pump.vibration", "pump.speed"];

/// Vibration (mm/s) at which ISO 10816 puts a pump of this class in zone D (damage).
pub const VIBRATION_DANGER: f64 = 7.1;
/// Vibration (mm/s) above which the pump is not sped up (ISO 10816 zone C: restricted).
pub const VIBRATION_WATCH: f64 = 4.5;

/// The pump bearing's vibration trend: ten-minute means over the last 12 hours, and the
/// hours until it reaches the danger level.
#[derive(Debug, Clone, Default)]
pub struct VibrationTrend {
    /// (t_ms, mm/s), oldest first.
    points: VecDeque<(i64, f64)>,
}

impl VibrationTrend {
    /// Adds a ten-minute mean at `t_ms`, forgetting what is more than 12 hours older.
    pub fn push(&mut self, t_ms: i64, mm_s: f64) {
        self.points.push_back((t_ms, mm_s));
        while self
            .points
            .front()
            .is_some_and(|(t, _)| t_ms - t > 12 * 3_600_000)
        {
            self.points.pop_front();
        }
    }

    /// A new bearing: the trend starts again.
    pub fn clear(&mut self) {
        self.points.clear();
    }

    /// Hours until the vibration trend reaches the danger level (least squares over the
    /// last three hours of ten-minute means), None without a rising trend.
    pub fn hours_to_danger(&self) -> Option<f64> {
        let last = self.points.back()?;
        let pts: Vec<&(i64, f64)> = self
            .points
            .iter()
            .filter(|(t, _)| last.0 - t <= 3 * 3_600_000)
            .collect();
        if pts.len() < 6 {
            return None;
        }
        let n = pts.len() as f64;
        let mx = pts.iter().map(|(t, _)| *t as f64 / 3.6e6).sum::<f64>() / n;
        let my = pts.iter().map(|(_, v)| *v).sum::<f64>() / n;
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for (t, v) in &pts {
            let dx = *t as f64 / 3.6e6 - mx;
            sxy += dx * (v - my);
            sxx += dx * dx;
        }
        let slope = sxy / sxx; // mm/s per hour
        if !(slope.is_finite() && slope > 1e-3) {
            return None;
        }
        Some(((VIBRATION_DANGER - last.1) / slope).max(0.0))
    }
}

pub struct Maintenance {
    id: Identity,
    trend: VibrationTrend,
    next_eval_ms: i64,
    maintenance_proposed_ms: Option<i64>,
    last_derate_ms: Option<i64>,
    stop_cited: HashSet<u64>,
    /// Hours to the danger level under which maintenance is proposed.
    pub maintenance_horizon_h: f64,
    /// Hours to the danger level under which the pump is derated.
    pub derate_horizon_h: f64,
    /// Latest estimate of hours until vibration reaches the danger level.
    pub hours_to_danger: Option<f64>,
}

impl Maintenance {
    pub fn new(id: Identity) -> Maintenance {
        Maintenance {
            id,
            trend: VibrationTrend::default(),
            next_eval_ms: i64::MIN,
            maintenance_proposed_ms: None,
            last_derate_ms: None,
            stop_cited: HashSet::new(),
            maintenance_horizon_h: 12.0,
            derate_horizon_h: 8.0,
            hours_to_danger: None,
        }
    }
}

impl Agent for Maintenance {
    fn identity(&mut self) -> &mut Identity {
        &mut self.id
    }

    fn observe(&mut self, twin: &Twin, active: &[&Detection], now_ms: i64) -> Vec<SignedProposal> {
        let mut out = Vec::new();
        // Equipment protection: imminent damage shown by detections.
        let damage: Vec<&Detection> = active
            .iter()
            .copied()
            .filter(|d| {
                d.kind == DetectionKind::LimitHigh
                    && d.evidence.signals.iter().any(|s| {
                        s == "pump.vibration" || s == "pump.bearing_temp" || s == "tank.level"
                    })
            })
            .collect();
        if damage.iter().any(|d| !self.stop_cited.contains(&d.id)) {
            let ids: Vec<u64> = damage.iter().map(|d| d.id).collect();
            let stop_inputs: Vec<&str> = damage
                .iter()
                .flat_map(|d| d.evidence.signals.iter().map(String::as_str))
                .collect();
            self.stop_cited.extend(ids.iter().copied());
            let what: Vec<String> = damage.iter().map(|d| d.message.clone()).collect();
            out.push(self.id.sign(
                Action::StopLine,
                format!("protect equipment: {}", what.join("; ")),
                ids,
                &stop_inputs,
                now_ms,
            ));
        }

        if now_ms < self.next_eval_ms {
            return out;
        }
        self.next_eval_ms = now_ms + 10 * 60 * 1000;
        let running = twin.value("pump.speed").is_some_and(|s| s > 500.0);
        if !running {
            return out;
        }
        let Some(v) = mean_recent(twin, "pump.vibration", 10 * 60 * 1000) else {
            return out;
        };
        self.trend.push(now_ms, v);
        self.hours_to_danger = self.trend.hours_to_danger();
        let Some(h) = self.hours_to_danger else {
            return out;
        };
        if h < self.maintenance_horizon_h
            && self
                .maintenance_proposed_ms
                .is_none_or(|t| now_ms - t > 6 * 3_600_000)
        {
            self.maintenance_proposed_ms = Some(now_ms);
            out.push(self.id.sign(
                Action::Maintenance { asset: "pump".into() },
                format!("pump vibration {v:.2} mm/s is rising; about {h:.1} h to the {VIBRATION_DANGER} mm/s danger level: replace the bearing"),
                vec![],
                MAINTENANCE_INPUTS,
                now_ms,
            ));
        }
        let speed = twin.value("pump.speed").unwrap_or(0.0);
        if h < self.derate_horizon_h
            && speed > 1350.0
            && self
                .last_derate_ms
                .is_none_or(|t| now_ms - t > 30 * 60 * 1000)
        {
            self.last_derate_ms = Some(now_ms);
            let target = ((speed - 100.0) / 10.0).round() * 10.0;
            out.push(self.id.sign(
                Action::SetSetpoint {
                    setpoint: "pump.speed_sp".into(),
                    value: target.max(1300.0),
                },
                format!(
                    "derate the pump to slow bearing wear until maintenance ({h:.1} h to danger)"
                ),
                vec![],
                MAINTENANCE_INPUTS,
                now_ms,
            ));
        }
        out
    }
}

/// What the optimiser's look-ahead starts from: the signals [`plant_sim::Sim::lookahead`]
/// reads.
pub const LOOKAHEAD_INPUTS: &[&str] = &[
    "tank.level",
    "tank.inlet_valve",
    "pump.speed",
    "pump.flow",
    "pump.vibration",
    "pump.bearing_temp",
    "past.product_temp",
    "past.inlet_temp",
    "past.steam_valve",
    "past.heat_duty",
    "filler.bpm",
    "filler.recirc_flow",
    "energy.ambient_temp",
];

/// Proposes setpoint changes that cut energy per good bottle, chosen by looking ahead:
/// every ten minutes it starts a model of the plant from the twin's recent values
/// ([`plant_sim::Sim::lookahead`]), simulates each candidate (pump speed and product
/// temperature setpoints one step either way, or held) over the horizon, and proposes the
/// candidate that fills as many good bottles as any, predicts no quality-limit violation
/// and keeps its margins, and uses the least energy per good bottle, when it saves enough
/// over holding the current setpoints. If holding is predicted to break a limit, the best
/// candidate that does not is proposed whatever its energy. Candidates the envelope
/// would refuse (step, changes per hour, slew, budget, counting its own proposals) are
/// not simulated.
pub struct Optimiser {
    id: Identity,
    plant: Arc<Plant>,
    next_eval_ms: i64,
    /// Simulated seconds each candidate is run ahead.
    pub horizon_s: u64,
    /// Lowest product temperature a candidate may reach on the way, °C: a margin above
    /// the 72 °C pasteurisation limit for what the model does not know.
    pub min_product_temp: f64,
    /// Highest reject rate (%) a candidate may reach on the way.
    pub max_reject: f64,
    /// Smallest predicted saving of energy per good bottle (a share) worth a change.
    pub min_gain: f64,
    /// The setpoints the plant holds, as far as the optimiser knows.
    known: HashMap<String, f64>,
    /// The changes it proposed: (time, setpoint, size), kept for an hour or the longest
    /// budget window, so that it proposes nothing the envelope's rate, slew or budget
    /// would refuse.
    proposed: VecDeque<(i64, &'static str, f64)>,
    /// The latest look-ahead, for the report.
    pub last: Option<Lookahead>,
    /// Every look-ahead's predicted energy per good bottle, holding the setpoints and with
    /// the candidate chosen: (time, hold Wh, chosen Wh), the last 24 hours' worth.
    pub history: VecDeque<(i64, f64, f64)>,
    /// The plant's energy per good bottle over each ten minutes, measured, beside what
    /// the model estimates the plant would use at the plant file's initial setpoints
    /// (the fixed-setpoint baseline) in the same conditions, the last 24 hours' worth.
    pub kpis: VecDeque<Kpi>,
}

/// Energy per good bottle (Wh) over the ten minutes before `at_ms`: measured (the energy
/// meter and the good-bottle counter), and estimated at fixed setpoints by the model
/// started from the same observation, settled for half an hour at the initial setpoints.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Kpi {
    pub at_ms: i64,
    pub measured_wh: Option<f64>,
    pub fixed_setpoints_wh: Option<f64>,
}

/// Change of a counter signal over the last `window_ms` of its history, and the span
/// it covers (ms).
fn counter_change(twin: &Twin, id: &str, window_ms: i64) -> Option<(f64, i64)> {
    let h = &twin.signal(id)?.history;
    let last = h.back()?;
    let first = h.iter().find(|p| last.t_ms - p.t_ms <= window_ms)?;
    Some((last.value - first.value, last.t_ms - first.t_ms))
}

/// One simulated candidate.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub pump_speed_sp: f64,
    pub temp_sp: f64,
    pub forecast: Forecast,
    /// Meets the quality limits with the optimiser's margins.
    pub feasible: bool,
}

/// What one look-ahead found.
#[derive(Debug, Clone, Serialize)]
pub struct Lookahead {
    pub at_ms: i64,
    pub candidates: Vec<Candidate>,
    /// Index of the candidate chosen, if any is feasible.
    pub chosen: Option<usize>,
    /// Index of the candidate that holds the current setpoints.
    pub hold: usize,
}

impl Lookahead {
    /// The setpoint changes it recommends: (setpoint, value), empty to hold.
    pub fn changes(&self, min_gain: f64) -> Vec<(&'static str, f64)> {
        let (Some(best), Some(hold)) = (
            self.chosen.and_then(|i| self.candidates.get(i)),
            self.candidates.get(self.hold),
        ) else {
            return Vec::new();
        };
        let saving = 1.0 - best.forecast.wh_per_good_bottle() / hold.forecast.wh_per_good_bottle();
        let hold_ok =
            hold.feasible && hold.forecast.good_bottles >= best.forecast.good_bottles * 0.999;
        if hold_ok && (saving.is_nan() || saving < min_gain) {
            return Vec::new();
        }
        let mut out = Vec::new();
        if best.pump_speed_sp != hold.pump_speed_sp {
            out.push(("pump.speed_sp", best.pump_speed_sp));
        }
        if best.temp_sp != hold.temp_sp {
            out.push(("past.temp_sp", best.temp_sp));
        }
        out
    }
}

impl Optimiser {
    pub fn new(id: Identity, plant: Arc<Plant>) -> Optimiser {
        // The filler's speed is the production plan's, not the optimiser's to know: the
        // look-ahead reads it from the filler.
        let known = plant
            .setpoints
            .iter()
            .filter(|s| s.id != "filler.speed_sp")
            .map(|s| (s.id.clone(), s.initial))
            .collect();
        Optimiser {
            id,
            plant,
            next_eval_ms: i64::MIN,
            horizon_s: 3600,
            min_product_temp: 72.6,
            max_reject: 1.0,
            min_gain: 0.005,
            known,
            proposed: VecDeque::new(),
            last: None,
            history: VecDeque::new(),
            kpis: VecDeque::new(),
        }
    }

    /// Whether changing `setpoint` by `delta` at `now_ms` stays inside what the plant
    /// file allows beyond its range: the step, changes per hour, slew rate and budget,
    /// counting the changes it proposed.
    fn allowed(&self, setpoint: &str, delta: f64, now_ms: i64) -> bool {
        let Some(sp) = self.plant.setpoint(setpoint) else {
            return false;
        };
        let mine = || self.proposed.iter().filter(|(_, id, _)| *id == setpoint);
        let within = |minutes: f64| {
            mine()
                .filter(move |(t, _, _)| ((now_ms - t) as f64) < minutes * 60_000.0)
                .map(|(_, _, d)| *d)
        };
        let rate_ok = within(60.0).count() < sp.max_changes_per_hour as usize;
        let slew_ok = match (sp.max_slew_per_min, mine().next_back()) {
            (Some(slew), Some((t, _, _))) => delta.abs() <= slew * ((now_ms - t) as f64 / 60_000.0),
            _ => true,
        };
        let budget_ok = sp
            .budget
            .as_ref()
            .is_none_or(|b| within(b.window_min).sum::<f64>() + delta.abs() <= b.max_total);
        delta.abs() <= sp.max_step && rate_ok && slew_ok && budget_ok
    }

    /// Tells the optimiser a setpoint the plant now holds (from executed commands).
    pub fn set_known_setpoint(&mut self, id: &str, value: f64) {
        if let Some(slot) = self.known.get_mut(id) {
            *slot = value;
        }
    }

    /// Simulates every candidate from `observed` over the horizon and picks the best.
    pub fn look_ahead(&self, observed: &Observed, now_ms: i64) -> Result<Lookahead, SimError> {
        let base = Sim::lookahead(&self.plant, observed)?;
        let held = |id: &str| observed.setpoints.get(id).copied();
        let (Some(speed), Some(temp)) = (held("pump.speed_sp"), held("past.temp_sp")) else {
            return Err(SimError::MissingSetpoint(
                "pump.speed_sp, past.temp_sp".into(),
            ));
        };
        let envelope = |id: &str| {
            self.plant
                .setpoint(id)
                .map_or((f64::NEG_INFINITY, f64::INFINITY), |s| (s.min, s.max))
        };
        let (smin, smax) = envelope("pump.speed_sp");
        let (tmin, tmax) = envelope("past.temp_sp");
        let vibration_ok = observed
            .values
            .get("pump.vibration")
            .is_some_and(|v| *v < VIBRATION_WATCH);
        let speeds: Vec<f64> = [-100.0, -50.0, 0.0, 50.0, 100.0]
            .into_iter()
            .filter(|d| {
                let s = speed + d;
                *d == 0.0
                    || (s >= smin
                        && s <= smax
                        && (*d < 0.0 || vibration_ok)
                        && self.allowed("pump.speed_sp", *d, now_ms))
            })
            .map(|d| speed + d)
            .collect();
        let temps: Vec<f64> = [-0.5, 0.0, 0.5]
            .into_iter()
            .filter(|d| {
                let t = temp + d;
                *d == 0.0 || (t >= tmin && t <= tmax && self.allowed("past.temp_sp", *d, now_ms))
            })
            .map(|d| temp + d)
            .collect();
        let mut candidates = Vec::with_capacity(speeds.len() * temps.len());
        let mut hold = 0;
        for &s in &speeds {
            for &t in &temps {
                let mut sim = base.clone();
                for (id, value) in [("pump.speed_sp", s), ("past.temp_sp", t)] {
                    sim.apply(&PlantCommand::SetSetpoint {
                        setpoint: id.into(),
                        value,
                    })?;
                }
                let forecast = sim.forecast(self.horizon_s);
                let feasible = forecast.quality_violation_s == 0
                    && !forecast.pump_failed
                    && forecast.min_product_temp >= self.min_product_temp
                    && forecast.max_reject_pct <= self.max_reject;
                if s == speed && t == temp {
                    hold = candidates.len();
                }
                candidates.push(Candidate {
                    pump_speed_sp: s,
                    temp_sp: t,
                    forecast,
                    feasible,
                });
            }
        }
        let most_good = candidates
            .iter()
            .filter(|c| c.feasible)
            .map(|c| c.forecast.good_bottles)
            .fold(0.0, f64::max);
        let chosen = candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.feasible && c.forecast.good_bottles >= most_good * 0.999)
            .min_by(|(_, a), (_, b)| {
                a.forecast
                    .wh_per_good_bottle()
                    .total_cmp(&b.forecast.wh_per_good_bottle())
            })
            .map(|(i, _)| i);
        Ok(Lookahead {
            at_ms: now_ms,
            candidates,
            chosen,
            hold,
        })
    }

    /// Energy per good bottle the model estimates at the plant file's initial setpoints,
    /// from `observed`: settled for half an hour, then measured over ten minutes.
    pub fn fixed_setpoints_wh(&self, observed: &Observed) -> Result<f64, SimError> {
        let mut sim = Sim::lookahead(&self.plant, observed)?;
        for id in self.known.keys() {
            if let Some(sp) = self.plant.setpoint(id) {
                sim.apply(&PlantCommand::SetSetpoint {
                    setpoint: id.clone(),
                    value: sp.initial,
                })?;
            }
        }
        sim.forecast(1800);
        Ok(sim.forecast(600).wh_per_good_bottle())
    }

    /// The twin's five-minute means of every plant signal and the setpoints known.
    pub fn observe_twin(&self, twin: &Twin) -> Observed {
        Observed {
            values: self
                .plant
                .signals
                .iter()
                .filter_map(|s| Some((s.id.clone(), mean_recent(twin, &s.id, 5 * 60 * 1000)?)))
                .collect(),
            setpoints: self.known.clone(),
        }
    }
}

impl Agent for Optimiser {
    fn identity(&mut self) -> &mut Identity {
        &mut self.id
    }

    fn observe(&mut self, twin: &Twin, active: &[&Detection], now_ms: i64) -> Vec<SignedProposal> {
        let mut out = Vec::new();
        if now_ms < self.next_eval_ms {
            return out;
        }
        self.next_eval_ms = now_ms + 10 * 60 * 1000;
        // Never optimise on a plant with open detections: first understand, then tune.
        if !active.is_empty() {
            return out;
        }
        let keep_ms = self
            .plant
            .setpoints
            .iter()
            .filter_map(|s| s.budget.as_ref().map(|b| b.window_min))
            .fold(60.0, f64::max)
            * 60_000.0;
        while self
            .proposed
            .front()
            .is_some_and(|(t, _, _)| (now_ms - t) as f64 > keep_ms)
        {
            self.proposed.pop_front();
        }
        let observed = self.observe_twin(twin);
        let running = |id: &str, least: f64| observed.values.get(id).is_some_and(|v| *v >= least);
        if !running("pump.speed", 500.0) || !running("filler.bpm", 50.0) {
            return out; // stopped or starting
        }
        let measured_wh = match (
            counter_change(twin, "energy.total", 10 * 60 * 1000),
            counter_change(twin, "filler.good_bottles", 10 * 60 * 1000),
        ) {
            (Some((kwh, span)), Some((good, _))) if span >= 5 * 60 * 1000 && good > 0.0 => {
                Some(kwh * 1000.0 / good)
            }
            _ => None,
        };
        if self.kpis.len() >= 144 {
            self.kpis.pop_front();
        }
        self.kpis.push_back(Kpi {
            at_ms: now_ms,
            measured_wh,
            fixed_setpoints_wh: self
                .fixed_setpoints_wh(&observed)
                .ok()
                .filter(|v| v.is_finite()),
        });
        let look = match self.look_ahead(&observed, now_ms) {
            Ok(look) => look,
            Err(_) => return out, // the twin lacks a signal the model starts from
        };
        let changes = look.changes(self.min_gain);
        if let (Some(best), Some(hold)) = (
            look.chosen.and_then(|i| look.candidates.get(i)),
            look.candidates.get(look.hold),
        ) {
            let why = format!(
                "look-ahead of {} candidates over {} min: {:.3} Wh per good bottle against {:.3} holding, product at least {:.2} degC, rejects at most {:.2} %",
                look.candidates.len(),
                self.horizon_s / 60,
                best.forecast.wh_per_good_bottle(),
                hold.forecast.wh_per_good_bottle(),
                best.forecast.min_product_temp,
                best.forecast.max_reject_pct,
            );
            for (setpoint, value) in changes {
                let from = observed.setpoints.get(setpoint).copied().unwrap_or(value);
                self.proposed
                    .push_back((now_ms, setpoint, (value - from).abs()));
                out.push(self.id.sign(
                    Action::SetSetpoint {
                        setpoint: setpoint.into(),
                        value,
                    },
                    format!("{setpoint} to {value}: {why}"),
                    vec![],
                    LOOKAHEAD_INPUTS,
                    now_ms,
                ));
            }
        }
        if let (Some(best), Some(hold)) = (
            look.chosen.and_then(|i| look.candidates.get(i)),
            look.candidates.get(look.hold),
        ) {
            if self.history.len() >= 144 {
                self.history.pop_front();
            }
            self.history.push_back((
                now_ms,
                hold.forecast.wh_per_good_bottle(),
                best.forecast.wh_per_good_bottle(),
            ));
        }
        self.last = Some(look);
        out
    }
}
