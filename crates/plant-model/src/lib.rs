//! The plant file: assets, signals with units and ranges, setpoints with their safety
//! envelopes, and the physics relations the twin checks.
//!
//! This crate only describes a plant; it does no I/O beyond parsing a string. Every other
//! stage of twinguard reads the same [`Plant`]: the simulator, ingest (schema, units,
//! instrument ranges), the twin (relations), the detectors (alarm limits) and the guard
//! (envelopes, safe states).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The reference bottling line, embedded so that `twinguard demo` needs no files.
pub const REFERENCE_PLANT: &str = include_str!("../plants/bottling-line.toml");

/// Largest plant file accepted, in bytes.
pub const MAX_PLANT_FILE_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PlantError {
    #[error("plant file {source_name} is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        source_name: String,
        size: usize,
        limit: usize,
    },
    #[error("plant file {source_name}: {message}")]
    Syntax {
        source_name: String,
        message: String,
    },
    #[error("plant file {source_name}: {location}: {message}")]
    Invalid {
        source_name: String,
        location: String,
        message: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlantInfo {
    /// Short identifier, used in MQTT topics (`[a-z0-9_-]+`).
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Asset {
    pub id: String,
    pub name: String,
    /// The edge device (gateway) that publishes this asset's signals.
    pub device: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signal {
    pub id: String,
    pub asset: String,
    pub unit: String,
    /// Instrument range `[min, max]`: outside it a value is impossible and rejected at ingest.
    pub range: [f64; 2],
    /// Operating limits `[low, high]`: outside them a value is a detection.
    pub alarm: [f64; 2],
    /// Largest plausible change per second.
    pub max_rate: f64,
    /// A noisy signal repeating one value this long is flagged as stuck.
    #[serde(default)]
    pub stuck_after_s: Option<u32>,
    /// A sample older than this is refused as stale (default: ingest's `max_age_ms`).
    #[serde(default)]
    pub max_age_s: Option<u32>,
    /// A condition-monitoring signal (vibration, bearing temperature) that rises as the
    /// equipment wears: when it alone leaves the learnt behaviour, the data cannot tell
    /// wear from a drifting sensor, and the episode goes to a human as `unknown`.
    #[serde(default)]
    pub wear_indicator: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskTier {
    /// Executed without a human when inside the envelope.
    Auto,
    /// Waits for one human approval.
    Approve,
    /// Waits for two approvals by distinct humans (IEC 62443-3-3 SR 2.1 RE 4).
    Dual,
}

/// A limit on the total change of a setpoint within a sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeBudget {
    /// Sum of absolute changes allowed within the window, in the setpoint's unit.
    pub max_total: f64,
    pub window_min: f64,
}

/// A process condition under which a setpoint may be changed: a signal's current value
/// must lie within `[min, max]` (either bound optional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Precondition {
    pub signal: String,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setpoint {
    pub id: String,
    pub asset: String,
    pub unit: String,
    pub min: f64,
    pub max: f64,
    /// Largest change in one command.
    pub max_step: f64,
    /// Most changes accepted in any sliding hour.
    pub max_changes_per_hour: u32,
    pub initial: f64,
    /// Value in the plant's safe state (applied by a line stop).
    pub safe: f64,
    pub risk: RiskTier,
    /// Slew-rate limit: a change may be at most this much per minute since the setpoint's
    /// previous change.
    #[serde(default)]
    pub max_slew_per_min: Option<f64>,
    /// Cumulative-change budget.
    #[serde(default)]
    pub budget: Option<ChangeBudget>,
    /// Conditions on the process that must hold for a change.
    #[serde(default)]
    pub preconditions: Vec<Precondition>,
}

/// Windows a heat balance's trend may span, at most (its fit compares every two).
pub const MAX_TREND_WINDOWS: u32 = 240;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RelationKind {
    /// `area * d(level)/dt = sum(inflows) - sum(outflows)`, flows in m3/h, level in m.
    MassBalance {
        level: String,
        inflows: Vec<String>,
        outflows: Vec<String>,
        area_m2: f64,
        window_s: u32,
    },
    /// A control loop holds `measured` at `setpoint`: once `settle_s` have passed since
    /// the setpoint last changed, the mean of `measured` over each `window_s` stays within
    /// `tolerance` of it. A sensor fault inside the loop does not break this (the
    /// controller holds the reading it is given); a stuck actuator or a process beyond
    /// the loop's reach does.
    Tracking {
        measured: String,
        setpoint: String,
        /// The loop's actuator (a valve position in %): at the end of its range while the
        /// loop misses, the loop is doing all it can, and the process is beyond its reach.
        #[serde(default)]
        actuator: Option<String>,
        tolerance: f64,
        settle_s: u32,
        window_s: u32,
    },
    /// A heat exchanger's energy balance: the heat the product takes up (`flow` in m3/h
    /// times `heat_capacity_kj_per_m3k` times the rise from `temp_in` to `temp_out`),
    /// plus what leaks to `ambient` (`loss_kw_per_k` per kelvin above it) and what warms
    /// the holdup (`holdup_kj_per_k` times `temp_out`'s change), over the heat supplied
    /// (`duty`, kW), is the exchanger's effectiveness: steady at its reference in
    /// service, falling slowly as it fouls. Estimated over each `window_s`, its trend over
    /// `trend_s` is judged: changing faster than `max_change_per_h` (a share per hour) in
    /// either direction is an alarm, falling being fouling beyond the normal or a
    /// measurement drifting, rising a measurement drifting (no exchanger cleans itself in
    /// service).
    HeatBalance {
        duty: String,
        flow: String,
        temp_in: String,
        temp_out: String,
        /// Volumetric heat capacity of the product times the share of its heating that
        /// `duty` supplies (the rest recovered regeneratively), kJ/(m3 K).
        heat_capacity_kj_per_m3k: f64,
        #[serde(default)]
        ambient: Option<String>,
        #[serde(default)]
        loss_kw_per_k: f64,
        #[serde(default)]
        holdup_kj_per_k: f64,
        /// The valve (in %) that sets `duty`: with the trend, when it will reach the end
        /// of its range, after which the temperature can no longer be held.
        #[serde(default)]
        actuator: Option<String>,
        max_change_per_h: f64,
        trend_s: u32,
        window_s: u32,
    },
}

impl RelationKind {
    /// The length of the relation's evaluation windows, seconds.
    pub fn window_s(&self) -> u32 {
        match self {
            RelationKind::MassBalance { window_s, .. }
            | RelationKind::Tracking { window_s, .. }
            | RelationKind::HeatBalance { window_s, .. } => *window_s,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Relation {
    pub id: String,
    #[serde(flatten)]
    pub kind: RelationKind,
}

impl Relation {
    /// Every signal the relation reads.
    pub fn signals(&self) -> Vec<&str> {
        match &self.kind {
            RelationKind::MassBalance {
                level,
                inflows,
                outflows,
                ..
            } => std::iter::once(level.as_str())
                .chain(inflows.iter().map(String::as_str))
                .chain(outflows.iter().map(String::as_str))
                .collect(),
            RelationKind::Tracking {
                measured, actuator, ..
            } => std::iter::once(measured.as_str())
                .chain(actuator.as_deref())
                .collect(),
            RelationKind::HeatBalance {
                duty,
                flow,
                temp_in,
                temp_out,
                ambient,
                actuator,
                ..
            } => [duty, flow, temp_in, temp_out]
                .into_iter()
                .map(String::as_str)
                .chain(ambient.as_deref())
                .chain(actuator.as_deref())
                .collect(),
        }
    }
}

/// Something the plant's control system is told to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PlantCommand {
    SetSetpoint {
        setpoint: String,
        value: f64,
    },
    /// Drive every setpoint to its safe value and hold there.
    StopLine,
    /// Leave the stopped state, back to the setpoints held before the stop.
    StartLine,
    /// Stop the pump, replace the bearing, restart (takes two hours).
    Maintenance,
    /// Take over what remains of an order from another line of the site (rerouting).
    /// Applied by the site's order book, not by the line's control loops.
    TakeOrder {
        order: String,
        from_line: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plant {
    pub plant: PlantInfo,
    pub assets: Vec<Asset>,
    pub signals: Vec<Signal>,
    pub setpoints: Vec<Setpoint>,
    #[serde(default)]
    pub relations: Vec<Relation>,
    /// Signal id -> its position in `signals`, built at the first lookup: ingest and the
    /// detectors look a signal up for every sample, and a plant file may name thousands.
    /// foldhash (seeded per process) rather than SipHash: its keys are the plant file's,
    /// and a lookup of a name not among them cannot add one.
    #[serde(skip)]
    signal_index: std::sync::OnceLock<foldhash::HashMap<Arc<str>, usize>>,
}

impl Plant {
    /// The embedded reference plant.
    pub fn reference() -> Plant {
        // The embedded file is checked by a unit test; failing here would be a build defect.
        match Plant::parse(REFERENCE_PLANT, "<embedded reference plant>") {
            Ok(p) => p,
            Err(e) => unreachable!("embedded plant file is invalid: {e}"),
        }
    }

    /// Parses and validates a plant file. `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Plant, PlantError> {
        if text.len() > MAX_PLANT_FILE_BYTES {
            return Err(PlantError::TooLarge {
                source_name: source_name.to_string(),
                size: text.len(),
                limit: MAX_PLANT_FILE_BYTES,
            });
        }
        let plant: Plant = toml::from_str(text).map_err(|e| PlantError::Syntax {
            source_name: source_name.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        plant.validate(source_name)?;
        Ok(plant)
    }

    fn validate(&self, source_name: &str) -> Result<(), PlantError> {
        let bad = |location: String, message: String| PlantError::Invalid {
            source_name: source_name.to_string(),
            location,
            message,
        };
        let ident_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        };
        if !ident_ok(&self.plant.id) || self.plant.id.contains('.') {
            return Err(bad(
                "plant.id".into(),
                format!("{:?} must be 1-64 of [A-Za-z0-9_-]", self.plant.id),
            ));
        }
        let mut assets = HashSet::new();
        for (i, a) in self.assets.iter().enumerate() {
            if !ident_ok(&a.id) || a.id.contains('.') {
                return Err(bad(
                    format!("assets[{i}].id"),
                    format!("{:?} must be 1-64 of [A-Za-z0-9_-]", a.id),
                ));
            }
            if !assets.insert(a.id.as_str()) {
                return Err(bad(
                    format!("assets[{i}].id"),
                    format!("duplicate asset {:?}", a.id),
                ));
            }
            if !ident_ok(&a.device) {
                return Err(bad(
                    format!("assets[{i}].device"),
                    format!("{:?} is not a valid device id", a.device),
                ));
            }
        }
        let mut signals = HashSet::new();
        for (i, s) in self.signals.iter().enumerate() {
            let loc = |f: &str| format!("signals[{i}] ({}).{f}", s.id);
            if !ident_ok(&s.id) {
                return Err(bad(
                    loc("id"),
                    format!("{:?} is not a valid signal id", s.id),
                ));
            }
            if !signals.insert(s.id.as_str()) {
                return Err(bad(loc("id"), "duplicate signal".into()));
            }
            if !assets.contains(s.asset.as_str()) {
                return Err(bad(loc("asset"), format!("unknown asset {:?}", s.asset)));
            }
            if !(s.range[0].is_finite() && s.range[1].is_finite() && s.range[0] < s.range[1]) {
                return Err(bad(
                    loc("range"),
                    "needs finite [min, max] with min < max".into(),
                ));
            }
            if s.alarm[0].is_nan() || s.alarm[1].is_nan() || s.alarm[0] > s.alarm[1] {
                return Err(bad(
                    loc("alarm"),
                    "needs [low, high] with low <= high".into(),
                ));
            }
            if !(s.max_rate.is_finite() && s.max_rate > 0.0) {
                return Err(bad(loc("max_rate"), "must be a positive number".into()));
            }
        }
        let mut setpoints = HashSet::new();
        for (i, sp) in self.setpoints.iter().enumerate() {
            let loc = |f: &str| format!("setpoints[{i}] ({}).{f}", sp.id);
            if !ident_ok(&sp.id) || signals.contains(sp.id.as_str()) {
                return Err(bad(
                    loc("id"),
                    "must be a valid id distinct from signals".into(),
                ));
            }
            if !setpoints.insert(sp.id.as_str()) {
                return Err(bad(loc("id"), "duplicate setpoint".into()));
            }
            if !assets.contains(sp.asset.as_str()) {
                return Err(bad(loc("asset"), format!("unknown asset {:?}", sp.asset)));
            }
            if !(sp.min.is_finite() && sp.max.is_finite() && sp.min <= sp.max) {
                return Err(bad(loc("min"), "needs finite min <= max".into()));
            }
            if !(sp.max_step.is_finite() && sp.max_step > 0.0) {
                return Err(bad(loc("max_step"), "must be a positive number".into()));
            }
            if !(sp.min..=sp.max).contains(&sp.initial) {
                return Err(bad(
                    loc("initial"),
                    format!("{} is outside [{}, {}]", sp.initial, sp.min, sp.max),
                ));
            }
            if !sp.safe.is_finite() {
                return Err(bad(loc("safe"), "must be a finite number".into()));
            }
            if sp
                .max_slew_per_min
                .is_some_and(|v| !(v.is_finite() && v > 0.0))
            {
                return Err(bad(
                    loc("max_slew_per_min"),
                    "must be a positive number".into(),
                ));
            }
            if let Some(b) = &sp.budget
                && !(b.max_total.is_finite()
                    && b.max_total > 0.0
                    && b.window_min.is_finite()
                    && b.window_min > 0.0)
            {
                return Err(bad(
                    loc("budget"),
                    "max_total and window_min must be positive numbers".into(),
                ));
            }
            for (k, c) in sp.preconditions.iter().enumerate() {
                let at = loc(&format!("preconditions[{k}]"));
                if !signals.contains(c.signal.as_str()) {
                    return Err(bad(at, format!("unknown signal {:?}", c.signal)));
                }
                let finite = |v: Option<f64>| v.is_none_or(f64::is_finite);
                if (c.min.is_none() && c.max.is_none())
                    || !finite(c.min)
                    || !finite(c.max)
                    || matches!((c.min, c.max), (Some(lo), Some(hi)) if lo > hi)
                {
                    return Err(bad(at, "needs finite min and/or max, min <= max".into()));
                }
            }
        }
        for (i, r) in self.relations.iter().enumerate() {
            for s in r.signals() {
                if !signals.contains(s) {
                    return Err(bad(
                        format!("relations[{i}] ({})", r.id),
                        format!("unknown signal {s:?}"),
                    ));
                }
            }
            match &r.kind {
                RelationKind::MassBalance {
                    area_m2, window_s, ..
                } => {
                    if !(area_m2.is_finite() && *area_m2 > 0.0) || *window_s == 0 {
                        return Err(bad(
                            format!("relations[{i}] ({})", r.id),
                            "area_m2 and window_s must be positive".into(),
                        ));
                    }
                }
                RelationKind::Tracking {
                    setpoint,
                    tolerance,
                    window_s,
                    ..
                } => {
                    if self.setpoint(setpoint).is_none() {
                        return Err(bad(
                            format!("relations[{i}] ({})", r.id),
                            format!("unknown setpoint {setpoint:?}"),
                        ));
                    }
                    if !(tolerance.is_finite() && *tolerance > 0.0) || *window_s == 0 {
                        return Err(bad(
                            format!("relations[{i}] ({})", r.id),
                            "tolerance and window_s must be positive".into(),
                        ));
                    }
                }
                RelationKind::HeatBalance {
                    heat_capacity_kj_per_m3k,
                    loss_kw_per_k,
                    holdup_kj_per_k,
                    max_change_per_h,
                    trend_s,
                    window_s,
                    ..
                } => {
                    let at = format!("relations[{i}] ({})", r.id);
                    let positive = |v: f64| v.is_finite() && v > 0.0;
                    let non_negative = |v: f64| v.is_finite() && v >= 0.0;
                    if !positive(*heat_capacity_kj_per_m3k) || !positive(*max_change_per_h) {
                        return Err(bad(
                            at,
                            "heat_capacity_kj_per_m3k and max_change_per_h must be positive".into(),
                        ));
                    }
                    if !non_negative(*loss_kw_per_k) || !non_negative(*holdup_kj_per_k) {
                        return Err(bad(
                            at,
                            "loss_kw_per_k and holdup_kj_per_k must not be negative".into(),
                        ));
                    }
                    // The trend is a fit over windows: at least four of them, and few enough
                    // that fitting every pair of them stays cheap.
                    if *window_s == 0
                        || *trend_s < 4 * *window_s
                        || *trend_s / *window_s > MAX_TREND_WINDOWS
                    {
                        return Err(bad(
                            at,
                            format!(
                                "window_s must be positive and trend_s from four to {MAX_TREND_WINDOWS} windows (trend_s = {trend_s}, window_s = {window_s})"
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    pub fn signal(&self, id: &str) -> Option<&Signal> {
        self.find_signal(id).map(|(_, s)| s)
    }

    /// The signal `id`, and its id as a shared string: every call for the same signal
    /// hands out the same allocation, so a sample can carry its signal's name without
    /// copying it.
    pub fn signal_named(&self, id: &str) -> Option<(Arc<str>, &Signal)> {
        self.find_signal(id).map(|(name, s)| {
            let name = name.map_or_else(|| Arc::from(s.id.as_str()), Arc::clone);
            (name, s)
        })
    }

    /// The signal `id`, with its shared id when the index holds it.
    fn find_signal(&self, id: &str) -> Option<(Option<&Arc<str>>, &Signal)> {
        let index = self.signal_index.get_or_init(|| {
            self.signals
                .iter()
                .enumerate()
                .map(|(i, s)| (Arc::from(s.id.as_str()), i))
                .collect()
        });
        match index
            .get_key_value(id)
            .and_then(|(name, &i)| Some((name, self.signals.get(i)?)))
        {
            Some((name, s)) if s.id == id => Some((Some(name), s)),
            // Not where the index says, or not in it: the list may have changed since the
            // index was built (its fields are public), and the list is what counts. Only
            // an unknown id pays for the scan, and it comes from an authenticated device.
            _ => self.signals.iter().find(|s| s.id == id).map(|s| (None, s)),
        }
    }

    pub fn relation(&self, id: &str) -> Option<&Relation> {
        self.relations.iter().find(|r| r.id == id)
    }

    pub fn setpoint(&self, id: &str) -> Option<&Setpoint> {
        self.setpoints.iter().find(|s| s.id == id)
    }

    pub fn asset(&self, id: &str) -> Option<&Asset> {
        self.assets.iter().find(|a| a.id == id)
    }

    /// The asset whose signals a device may publish.
    pub fn asset_of_device(&self, device: &str) -> Option<&Asset> {
        self.assets.iter().find(|a| a.device == device)
    }

    /// Setpoint values of the safe state, by setpoint id.
    pub fn safe_state(&self) -> BTreeMap<String, f64> {
        self.setpoints
            .iter()
            .map(|s| (s.id.clone(), s.safe))
            .collect()
    }

    /// MQTT topic on which an asset's telemetry frames are published.
    pub fn telemetry_topic(&self, asset: &str) -> String {
        format!("twinguard/{}/{}/telemetry", self.plant.id, asset)
    }

    /// MQTT topic on which signed commands for an asset are published.
    pub fn command_topic(&self, asset: &str) -> String {
        format!("twinguard/{}/{}/cmd", self.plant.id, asset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_found_by_id_even_after_the_list_changes() {
        let mut p = Plant::parse(REFERENCE_PLANT, "ref").unwrap();
        for s in p.signals.clone() {
            assert_eq!(p.signal(&s.id).map(|f| &f.id), Some(&s.id));
        }
        assert!(p.signal("tank.nothing").is_none());
        // The index is built by now; a signal added afterwards is still found, and one
        // removed is not.
        let mut extra = p.signals[0].clone();
        extra.id = "tank.level_2".into();
        p.signals.push(extra);
        assert_eq!(p.signal("tank.level_2").unwrap().id, "tank.level_2");
        let gone = p.signals.remove(0);
        assert!(p.signal(&gone.id).is_none());
        assert_eq!(p.signal("tank.level_2").unwrap().id, "tank.level_2");
        let last = p.signals.last().unwrap().id.clone();
        assert_eq!(p.signal(&last).unwrap().id, last);
    }

    #[test]
    fn a_signal_name_is_handed_out_shared_and_a_changed_list_still_counts() {
        let mut p = Plant::parse(REFERENCE_PLANT, "ref").unwrap();
        let (a, s) = p.signal_named("tank.level").unwrap();
        assert_eq!((&*a, s.id.as_str()), ("tank.level", "tank.level"));
        let (b, _) = p.signal_named("tank.level").unwrap();
        assert!(Arc::ptr_eq(&a, &b), "the same allocation for every sample");
        assert!(p.signal_named("tank.nothing").is_none());
        // Moved in the list after the index was built: found where it now is, by name.
        p.signals.swap(0, 1);
        let id0 = p.signals[0].id.clone();
        let (c, s) = p.signal_named(&id0).unwrap();
        assert_eq!((&*c, &s.id), (id0.as_str(), &id0));
    }

    #[test]
    fn reference_plant_is_valid_and_large_enough() {
        let p = Plant::parse(REFERENCE_PLANT, "ref").unwrap();
        assert!(p.signals.len() >= 20, "{} signals", p.signals.len());
        assert!(p.setpoints.len() >= 4);
        assert_eq!(
            p.relations.len(),
            4,
            "a mass balance, two control loops and a heat balance"
        );
        assert_eq!(p.asset_of_device("gw-pump").unwrap().id, "pump");
    }

    #[test]
    fn syntax_error_names_the_file_and_line() {
        let e = Plant::parse("[plant\nid=1", "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.toml"), "{e}");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn unknown_field_is_refused() {
        let text = REFERENCE_PLANT.replace("max_rate = 0.02", "max_rate = 0.02\nmax_rat = 1");
        let e = Plant::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("max_rat"), "{e}");
    }

    #[test]
    fn unknown_asset_names_the_signal() {
        let text = REFERENCE_PLANT.replacen("asset = \"tank\"", "asset = \"tnak\"", 1);
        let e = Plant::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("signals[0] (tank.level).asset"), "{e}");
        assert!(e.contains("tnak"), "{e}");
    }

    #[test]
    fn initial_outside_envelope_is_refused() {
        let text = REFERENCE_PLANT.replace("initial = 1600.0", "initial = 5000.0");
        let e = Plant::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("pump.speed_sp") && e.contains("initial"), "{e}");
    }

    #[test]
    fn relation_with_unknown_signal_is_refused() {
        let text =
            REFERENCE_PLANT.replace("outflows = [\"pump.flow\"]", "outflows = [\"pump.flo\"]");
        let e = Plant::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("pump.flo"), "{e}");
    }

    #[test]
    fn a_control_loop_needs_a_known_setpoint_and_a_positive_tolerance() {
        let text =
            REFERENCE_PLANT.replace("setpoint = \"past.temp_sp\"", "setpoint = \"past.tmp_sp\"");
        let e = Plant::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(
            e.contains("past.temperature_loop") && e.contains("unknown setpoint \"past.tmp_sp\""),
            "{e}"
        );
        let text = REFERENCE_PLANT.replace("tolerance = 0.3", "tolerance = 0.0");
        let e = Plant::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("tolerance and window_s must be positive"), "{e}");
        let text = REFERENCE_PLANT.replace(
            "actuator = \"past.steam_valve\"",
            "actuator = \"past.steam\"",
        );
        let e = Plant::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("unknown signal \"past.steam\""), "{e}");
    }

    #[test]
    fn a_heat_balance_needs_known_signals_and_a_trend_of_several_windows() {
        let text = REFERENCE_PLANT.replace("duty = \"past.heat_duty\"", "duty = \"past.duty\"");
        let e = Plant::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(
            e.contains("past.heat_balance") && e.contains("unknown signal \"past.duty\""),
            "{e}"
        );
        for trend in ["600", "86400"] {
            let text = REFERENCE_PLANT.replace("trend_s = 3600", &format!("trend_s = {trend}"));
            let e = Plant::parse(&text, "x.toml").unwrap_err().to_string();
            assert!(
                e.contains("past.heat_balance") && e.contains("trend_s from four to 240 windows"),
                "{e}"
            );
        }
        let text = REFERENCE_PLANT.replace("loss_kw_per_k = 0.2", "loss_kw_per_k = -0.2");
        let e = Plant::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("must not be negative"), "{e}");
        let text = REFERENCE_PLANT.replace("max_change_per_h = 0.01", "max_change_per_h = 0");
        let e = Plant::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("max_change_per_h must be positive"), "{e}");
    }
}
