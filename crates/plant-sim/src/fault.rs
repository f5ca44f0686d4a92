//! Injectable faults, written `kind:target@start[+duration][=magnitude]`, times in seconds
//! of simulated time, for example `drift:tank.level@3600=0.05` (0.05 m per hour from the
//! first hour on) or `stick:past.steam_valve@7200+1800`.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The sensor repeats its last value.
    Stuck,
    /// The sensor reads `magnitude` more per hour since the start.
    Drift,
    /// The sensor reads `magnitude` more.
    Bias,
    /// The sensor reads `magnitude` more on about 1 % of samples.
    Spike,
    /// The valve (`tank.inlet_valve` or `past.steam_valve`) stops moving.
    ValveStick,
    /// The pasteuriser loses `magnitude` of its effectiveness per hour.
    Fouling,
    /// The pump bearing wears `magnitude` times faster (target `pump`).
    Wear,
}

impl FaultKind {
    fn parse(s: &str) -> Option<FaultKind> {
        Some(match s {
            "stuck" => FaultKind::Stuck,
            "drift" => FaultKind::Drift,
            "bias" => FaultKind::Bias,
            "spike" => FaultKind::Spike,
            "stick" | "valve-stick" => FaultKind::ValveStick,
            "fouling" => FaultKind::Fouling,
            "wear" => FaultKind::Wear,
            _ => return None,
        })
    }

    fn default_magnitude(self) -> f64 {
        match self {
            FaultKind::Drift => 0.1,
            FaultKind::Bias => 0.2,
            FaultKind::Spike => 5.0,
            FaultKind::Fouling => 0.02,
            FaultKind::Wear => 3.0,
            FaultKind::Stuck | FaultKind::ValveStick => 0.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    pub kind: FaultKind,
    /// A signal id (sensor faults, valve sticking) or `past` (fouling).
    pub target: String,
    pub start_s: u64,
    pub duration_s: Option<u64>,
    pub magnitude: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error(
    "fault {spec:?}: {message} (expected kind:target@start[+duration][=magnitude], kinds: stuck, drift, bias, spike, stick, fouling, wear)"
)]
pub struct FaultParseError {
    pub spec: String,
    pub message: String,
}

impl Fault {
    pub fn active(&self, t_s: u64) -> bool {
        t_s >= self.start_s && self.duration_s.is_none_or(|d| t_s < self.start_s + d)
    }

    pub fn parse(spec: &str) -> Result<Fault, FaultParseError> {
        let err = |message: &str| FaultParseError {
            spec: spec.to_string(),
            message: message.to_string(),
        };
        let (kind, rest) = spec.split_once(':').ok_or_else(|| err("missing ':'"))?;
        let kind = FaultKind::parse(kind).ok_or_else(|| err("unknown fault kind"))?;
        let (target, when) = rest
            .split_once('@')
            .ok_or_else(|| err("missing '@start'"))?;
        if target.is_empty() {
            return Err(err("missing target"));
        }
        let (when, magnitude) = match when.split_once('=') {
            Some((w, m)) => (
                w,
                m.parse::<f64>()
                    .ok()
                    .filter(|m| m.is_finite())
                    .ok_or_else(|| err("magnitude is not a number"))?,
            ),
            None => (when, kind.default_magnitude()),
        };
        let (start, duration) = match when.split_once('+') {
            Some((s, d)) => (
                s,
                Some(
                    d.parse::<u64>()
                        .map_err(|_| err("duration is not whole seconds"))?,
                ),
            ),
            None => (when, None),
        };
        let start_s = start
            .parse::<u64>()
            .map_err(|_| err("start is not whole seconds"))?;
        Ok(Fault {
            kind,
            target: target.to_string(),
            start_s,
            duration_s: duration,
            magnitude,
        })
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}:{}@{}", self.kind, self.target, self.start_s)?;
        if let Some(d) = self.duration_s {
            write!(f, "+{d}")?;
        }
        write!(f, "={}", self.magnitude)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_spec() {
        let f = Fault::parse("drift:tank.level@3600+600=0.05").unwrap();
        assert_eq!(f.kind, FaultKind::Drift);
        assert_eq!(f.target, "tank.level");
        assert_eq!(f.start_s, 3600);
        assert_eq!(f.duration_s, Some(600));
        assert_eq!(f.magnitude, 0.05);
        assert!(f.active(3600) && f.active(4199) && !f.active(4200) && !f.active(3599));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, msg) in [
            ("melt:tank.level@1", "unknown fault kind"),
            ("stuck:tank.level", "missing '@start'"),
            ("stuck:tank.level@soon", "start is not whole seconds"),
            ("bias:tank.level@1=big", "magnitude is not a number"),
        ] {
            let e = Fault::parse(spec).unwrap_err();
            assert_eq!(e.message, msg, "{spec}");
            assert!(e.to_string().contains(spec));
        }
    }
}
