//! Agents propose; nothing more. Each has its own signing key and a short-lived token from
//! the guard, reads the twin and the active detections, and returns signed proposals.
//!
//! - [`Maintenance`] tracks pump bearing health from the vibration trend, proposes a speed
//!   derate and a maintenance window before failure, and asks for a line stop when
//!   detections show imminent damage.
//! - [`Optimiser`] proposes setpoint changes that cut energy per good bottle while keeping
//!   product temperature and rejects inside their quality limits.

use std::collections::{HashSet, VecDeque};

use detect::{Detection, DetectionKind};
use ed25519_dalek::SigningKey;
use guard::{Action, Proposal, SignedProposal, Token, sign_proposal};
use twin::Twin;

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
/// What the optimiser's pump-speed proposals rest on.
const SPEED_INPUTS: &[&str] = &[
    "filler.recirc_flow",
    "filler.bpm",
    "pump.speed",
    "pump.vibration",
];
/// What the optimiser's temperature proposals rest on.
const TEMP_INPUTS: &[&str] = &["past.product_temp", "filler.reject_rate"];

/// Vibration (mm/s) at which ISO 10816 puts a pump of this class in zone D (damage).
pub const VIBRATION_DANGER: f64 = 7.1;
/// Vibration (mm/s) above which the pump is not sped up (ISO 10816 zone C: restricted).
pub const VIBRATION_WATCH: f64 = 4.5;

pub struct Maintenance {
    id: Identity,
    /// Ten-minute means of vibration: (t_ms, mm/s), up to 12 hours.
    trend: VecDeque<(i64, f64)>,
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
            trend: VecDeque::new(),
            next_eval_ms: i64::MIN,
            maintenance_proposed_ms: None,
            last_derate_ms: None,
            stop_cited: HashSet::new(),
            maintenance_horizon_h: 12.0,
            derate_horizon_h: 8.0,
            hours_to_danger: None,
        }
    }

    /// Hours until the vibration trend reaches the danger level (least squares over the
    /// last three hours of ten-minute means), None without a rising trend.
    fn estimate(&self) -> Option<f64> {
        let last = self.trend.back()?;
        let pts: Vec<&(i64, f64)> = self
            .trend
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
        self.trend.push_back((now_ms, v));
        while self
            .trend
            .front()
            .is_some_and(|(t, _)| now_ms - t > 12 * 3_600_000)
        {
            self.trend.pop_front();
        }
        self.hours_to_danger = self.estimate();
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

pub struct Optimiser {
    id: Identity,
    next_eval_ms: i64,
    /// Lowest product temperature setpoint it will propose (quality margin above 72.5).
    pub min_temp_sp: f64,
    /// Largest reject rate (%) at which it still lowers the temperature.
    pub max_reject: f64,
    temp_sp: Option<f64>,
}

impl Optimiser {
    pub fn new(id: Identity) -> Optimiser {
        Optimiser {
            id,
            next_eval_ms: i64::MIN,
            min_temp_sp: 73.0,
            max_reject: 1.0,
            temp_sp: None,
        }
    }

    /// Tells the optimiser the setpoint the plant holds (from executed commands).
    pub fn set_known_temp_sp(&mut self, v: f64) {
        self.temp_sp = Some(v);
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
        self.next_eval_ms = now_ms + 15 * 60 * 1000;
        // Never optimise on a plant with open detections: first understand, then tune.
        if !active.is_empty() {
            return out;
        }
        let window = 5 * 60 * 1000;
        let (Some(recirc), Some(speed), Some(temp), Some(reject), Some(bpm)) = (
            mean_recent(twin, "filler.recirc_flow", window),
            twin.value("pump.speed"),
            mean_recent(twin, "past.product_temp", window),
            mean_recent(twin, "filler.reject_rate", window),
            mean_recent(twin, "filler.bpm", window),
        ) else {
            return out;
        };
        if speed < 500.0 || bpm < 50.0 {
            return out; // stopped or starting
        }
        // Pumping product that the filler cannot take only to recirculate it heats it for
        // nothing: slow the pump until recirculation is small. One 50 rpm step moves the
        // flow by about 0.8 m3/h, so the dead band (0.05 to 1.0) is wider than a step and
        // the agent does not hunt.
        if recirc > 1.0 {
            let target = ((speed - 50.0) / 10.0).round() * 10.0;
            out.push(self.id.sign(
                Action::SetSetpoint {
                    setpoint: "pump.speed_sp".into(),
                    value: target,
                },
                format!("recirculation {recirc:.2} m3/h heats product for nothing: pump speed to {target} rpm"),
                vec![],
                SPEED_INPUTS,
                now_ms,
            ));
        } else if recirc < 0.05
            && speed < 1700.0
            && twin
                .value("pump.vibration")
                .is_some_and(|v| v < VIBRATION_WATCH)
        {
            let target = ((speed + 50.0) / 10.0).round() * 10.0;
            out.push(self.id.sign(
                Action::SetSetpoint {
                    setpoint: "pump.speed_sp".into(),
                    value: target,
                },
                format!(
                    "filler starved (recirculation {recirc:.2} m3/h): pump speed to {target} rpm"
                ),
                vec![],
                SPEED_INPUTS,
                now_ms,
            ));
        }
        // Hold temperature with a margin above the pasteurisation limit; each degree less
        // is steam saved.
        let sp = self.temp_sp.unwrap_or(temp.round());
        if reject < self.max_reject && sp - 0.5 >= self.min_temp_sp && temp > self.min_temp_sp + 0.3
        {
            let target = sp - 0.5;
            out.push(self.id.sign(
                Action::SetSetpoint {
                    setpoint: "past.temp_sp".into(),
                    value: target,
                },
                format!("rejects {reject:.2} % are low: product temperature setpoint to {target} degC saves steam"),
                vec![],
                TEMP_INPUTS,
                now_ms,
            ));
        }
        out
    }
}
