//! Detectors: per-signal plausibility (operating limits, rate of change, stuck value) and
//! the twin's physics residuals. Each detection is an episode (raised, then cleared) that
//! names the evidence it rests on: the signals, the relation, the devices and whether all
//! of that data can be trusted.
//!
//! No I/O and no clock: time comes from the samples.

pub mod gated;
pub mod live;
pub mod multivariate;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use ingest::{Sample, Trust};
use plant_model::Plant;
use serde::Serialize;
use twin::Residual;

/// Samples outside the operating limits in a row before a limit detection is raised.
const LIMIT_DEBOUNCE: u32 = 3;
/// Samples back inside before a limit detection clears.
const LIMIT_CLEAR: u32 = 30;
/// A rate or residual episode clears this long after its last violation.
const HOLD_MS: i64 = 120_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectionKind {
    LimitHigh,
    LimitLow,
    Rate,
    Stuck,
    /// A physics relation of the twin does not hold.
    Physics,
    /// A signal's data stopped arriving (or never arrived) while others did.
    Gap,
    /// The signals together left the normal behaviour a PCA model learnt (T² or SPE).
    Multivariate,
}

impl DetectionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DetectionKind::LimitHigh => "limit_high",
            DetectionKind::LimitLow => "limit_low",
            DetectionKind::Rate => "rate",
            DetectionKind::Stuck => "stuck",
            DetectionKind::Physics => "physics",
            DetectionKind::Gap => "gap",
            DetectionKind::Multivariate => "multivariate",
        }
    }
}

/// What a detection rests on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    pub signals: Vec<String>,
    pub relation: Option<String>,
    pub devices: Vec<String>,
    /// All samples came verified and no physics relation over them is in alarm.
    pub trusted: bool,
}

/// What an alarm episode looks like: the class decides who acts on it. `Unknown` and
/// `SuspectedAttack` go to a human, never straight to an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EpisodeClass {
    Normal,
    /// One signal's own signature (stuck, spikes), or one signal breaking relations the
    /// others keep: the sensor, not the process.
    SensorFault,
    /// The process itself moved: its relations hold, its values are beyond their range.
    ProcessUpset,
    /// The data's provenance is in doubt: the devices behind it had frames refused for
    /// integrity (forged, replayed, altered) while the episode formed.
    SuspectedAttack,
    /// Physics broken without a sensor's signature, or a gap: a human judges.
    Unknown,
}

impl EpisodeClass {
    pub fn as_str(self) -> &'static str {
        match self {
            EpisodeClass::Normal => "normal",
            EpisodeClass::SensorFault => "sensor_fault",
            EpisodeClass::ProcessUpset => "process_upset",
            EpisodeClass::SuspectedAttack => "suspected_attack",
            EpisodeClass::Unknown => "unknown",
        }
    }

    /// Whether an action may rest on it without a human.
    pub fn actionable(self) -> bool {
        matches!(self, EpisodeClass::SensorFault | EpisodeClass::ProcessUpset)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    pub id: u64,
    pub kind: DetectionKind,
    pub raised_ms: i64,
    pub value: f64,
    pub limit: f64,
    pub message: String,
    pub evidence: Evidence,
    /// The episode's class, revised while it is active as evidence arrives.
    pub class: EpisodeClass,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Raised(Detection),
    Cleared {
        id: u64,
        t_ms: i64,
    },
    /// An active episode's class changed as evidence arrived (another signal jumped at
    /// the same moment, a device's frames failed integrity, the model's reading moved).
    Reclassified {
        id: u64,
        t_ms: i64,
        class: EpisodeClass,
        was: EpisodeClass,
    },
}

#[derive(Debug, Default)]
struct SignalMemory {
    last: Option<(i64, f64)>,
    same_since_ms: Option<i64>,
    outside: u32,
    inside: u32,
    last_rate_violation: Option<i64>,
    /// When the signal's current stretch outside its operating limits began, and when the
    /// latest stretch that raised a limit episode began.
    outside_since: Option<i64>,
    limit_crossed_ms: Option<i64>,
}

/// Key of an episode: the detector and what it watches (a signal's id is the plant's
/// shared one, so that a sample's key allocates nothing).
type Key = (DetectionKind, Arc<str>);

pub struct Detectors {
    plant: Arc<Plant>,
    memory: foldhash::HashMap<Arc<str>, SignalMemory>,
    active: BTreeMap<Key, Detection>,
    relation_last_alarm: HashMap<String, i64>,
    next_id: u64,
    counts: BTreeMap<DetectionKind, u64>,
    first_data_ms: Option<i64>,
    /// Device -> time of its latest frame refused for integrity.
    integrity_failures: HashMap<String, i64>,
    /// Control loops whose latest window missed with the actuator at the end of its range.
    saturated_loops: HashSet<String>,
    /// Signal -> time of its latest own sensor signature (stuck, rate) and whether it was
    /// a jump (rate), which is the sensor's own only if no other signal jumped with it.
    signatures: HashMap<String, (i64, bool)>,
    /// What the multivariate model's own evidence says of its current episode (SPE carried
    /// by one signal: a sensor; T²: the process).
    multivariate_hint: EpisodeClass,
    /// When the multivariate score was last above its threshold.
    multivariate_last_alarm: Option<i64>,
    /// How many episodes are active on each subject (a signal, a relation, `source:` and
    /// a source): a sample or a gap check on a signal with none has nothing to clear, and
    /// finding that out allocates nothing.
    open: foldhash::HashMap<Arc<str>, usize>,
}

/// How long a device's integrity failure makes episodes on its data suspect, and how
/// long a signal's own sensor signature (stuck, spike) explains a broken relation.
const INTEGRITY_MEMORY_MS: i64 = 15 * 60 * 1000;
const SIGNATURE_MEMORY_MS: i64 = 15 * 60 * 1000;
/// Implausibly fast changes of different signals this close together (within the time a
/// rate episode stays raised) are one event of the process (a pump stopping moves its
/// flow, the filler and the vibration within seconds), not each sensor's own fault: a
/// faulty sensor jumps alone.
const COINCIDENT_MS: i64 = HOLD_MS;
/// A jump this close to another signal crossing its operating limit is the plant
/// reacting to the crossing (an interlock: product under its pasteurisation temperature
/// diverted, a trip), not the jumping sensor's own fault.
const INTERLOCK_MS: i64 = 15_000;

impl Detectors {
    pub fn new(plant: Arc<Plant>) -> Detectors {
        Detectors {
            plant,
            memory: foldhash::HashMap::default(),
            active: BTreeMap::new(),
            relation_last_alarm: HashMap::new(),
            next_id: 1,
            counts: BTreeMap::new(),
            first_data_ms: None,
            integrity_failures: HashMap::new(),
            saturated_loops: HashSet::new(),
            signatures: HashMap::new(),
            multivariate_hint: EpisodeClass::Unknown,
            multivariate_last_alarm: None,
            open: foldhash::HashMap::default(),
        }
    }

    /// A frame from `device` was refused for integrity at `t_ms` (forged, replayed,
    /// altered): episodes resting on its data are suspected attacks for a while. Returns
    /// the episodes whose class this changed.
    pub fn note_integrity_failure(&mut self, device: &str, t_ms: i64) -> Vec<Event> {
        let latest = self
            .integrity_failures
            .entry(device.to_string())
            .or_insert(t_ms);
        *latest = (*latest).max(t_ms);
        let mut events = Vec::new();
        self.reclassify(&mut events, t_ms);
        events
    }

    /// The control loop `relation` is, if it is one: its measured signal, setpoint and
    /// tolerance.
    fn tracking(&self, relation: &str) -> Option<(&str, &str, f64)> {
        match &self.plant.relation(relation)?.kind {
            plant_model::RelationKind::Tracking {
                measured,
                setpoint,
                tolerance,
                ..
            } => Some((measured.as_str(), setpoint.as_str(), *tolerance)),
            plant_model::RelationKind::MassBalance { .. }
            | plant_model::RelationKind::HeatBalance { .. } => None,
        }
    }

    /// The outlet temperature of the heat balance `relation`, if it is one.
    fn heat_balance_outlet(&self, relation: &str) -> Option<&str> {
        match &self.plant.relation(relation)?.kind {
            plant_model::RelationKind::HeatBalance { temp_out, .. } => Some(temp_out.as_str()),
            _ => None,
        }
    }

    /// What a heat balance's alarm says: the effectiveness, its trend, what that may mean
    /// and, falling, when the actuator will reach its end.
    fn heat_balance_message(&self, r: &Residual, effectiveness: f64) -> String {
        let (limit, actuator) = match self.plant.relation(&r.relation).map(|p| &p.kind) {
            Some(plant_model::RelationKind::HeatBalance {
                max_change_per_h,
                actuator,
                ..
            }) => (*max_change_per_h, actuator.as_deref()),
            _ => (0.0, None),
        };
        let per_h = 100.0 * r.residual.abs();
        let limit = 100.0 * limit;
        if r.residual < 0.0 {
            let forecast = match (actuator, r.actuator_end_in_h) {
                (Some(a), Some(h)) => {
                    format!(
                        "; at its latest rate {a} reaches the end of its range in about {h:.1} h"
                    )
                }
                _ => String::new(),
            };
            format!(
                "{}: the exchanger's effectiveness is {effectiveness:.3} and falling {per_h:.1} % an hour over the trend (more than {limit:.1} %): fouling far faster than normal, or a measurement in the balance drifting{forecast}",
                r.relation
            )
        } else {
            format!(
                "{}: the exchanger's effectiveness is {effectiveness:.3} and rising {per_h:.1} % an hour (more than {limit:.1} %): no exchanger cleans itself in service, a measurement in the balance is drifting",
                r.relation
            )
        }
    }

    /// Whether another signal than `signal` changed implausibly fast within
    /// [`COINCIDENT_MS`] of `t_ms`, or crossed its operating limit within
    /// [`INTERLOCK_MS`] of it.
    fn coincident_jump(&self, signal: &str, t_ms: i64) -> bool {
        self.memory.iter().any(|(other, m)| {
            &**other != signal
                && (m
                    .last_rate_violation
                    .is_some_and(|t| (t - t_ms).abs() <= COINCIDENT_MS)
                    || m.limit_crossed_ms
                        .is_some_and(|t| (t - t_ms).abs() <= INTERLOCK_MS))
        })
    }

    /// The class of an episode of `kind` with `evidence`, raised at `raised_ms`, given
    /// what else is active at `t_ms`.
    fn classify(
        &self,
        kind: DetectionKind,
        evidence: &Evidence,
        value: f64,
        raised_ms: i64,
        t_ms: i64,
    ) -> EpisodeClass {
        let doubted = evidence.devices.iter().any(|d| {
            self.integrity_failures
                .get(d)
                .is_some_and(|&f| t_ms - f <= INTEGRITY_MEMORY_MS)
        });
        if doubted {
            return EpisodeClass::SuspectedAttack;
        }
        // A signal's own signature: stuck, or a jump no other signal made with it. (The
        // learnt model isolating a slow drift of one signal is not one: a compromised
        // gateway's validly signed false values drift just so.)
        let own_signature = |signal: &str| {
            self.active.iter().any(|((k, s), d)| {
                &**s == signal
                    && match k {
                        DetectionKind::Stuck => true,
                        DetectionKind::Rate => !self.coincident_jump(s, d.raised_ms),
                        _ => false,
                    }
            }) || self.signatures.get(signal).is_some_and(|&(t, jump)| {
                t_ms - t <= SIGNATURE_MEMORY_MS && !(jump && self.coincident_jump(signal, t))
            })
        };
        let in_broken_relation = |signal: &str| {
            self.active.values().any(|d| {
                d.kind == DetectionKind::Physics && d.evidence.signals.iter().any(|s| s == signal)
            })
        };
        match kind {
            DetectionKind::Stuck => EpisodeClass::SensorFault,
            DetectionKind::Rate => {
                let signal = evidence.signals.first().map(String::as_str).unwrap_or("");
                if self.coincident_jump(signal, raised_ms) {
                    EpisodeClass::ProcessUpset
                } else {
                    EpisodeClass::SensorFault
                }
            }
            DetectionKind::Physics => {
                let faulty = evidence.signals.iter().filter(|s| own_signature(s)).count();
                let relation = evidence.relation.as_deref().unwrap_or("");
                // Another relation broken over the same signals contradicts the data,
                // except an exchanger losing effectiveness: that is what puts a loop
                // beyond its reach.
                let contradicted = self.active.values().any(|d| {
                    d.kind == DetectionKind::Physics
                        && d.evidence.relation.as_deref() != Some(relation)
                        && !(d.value < 0.0
                            && self
                                .heat_balance_outlet(d.evidence.relation.as_deref().unwrap_or(""))
                                .is_some())
                        && d.evidence
                            .signals
                            .iter()
                            .any(|s| evidence.signals.contains(s))
                });
                // A loop over `measured` misses its setpoint with its actuator at its end.
                let loop_beyond_reach = |measured: &str| {
                    self.active.values().any(|d| {
                        let r = d.evidence.relation.as_deref().unwrap_or("");
                        d.kind == DetectionKind::Physics
                            && self.saturated_loops.contains(r)
                            && self.tracking(r).is_some_and(|(m, _, _)| m == measured)
                    })
                };
                if faulty == 1 {
                    EpisodeClass::SensorFault
                } else if self
                    .heat_balance_outlet(relation)
                    .is_some_and(|outlet| value < 0.0 && loop_beyond_reach(outlet))
                {
                    // An exchanger losing effectiveness while the loop on its outlet,
                    // actuator at its end, can no longer hold the temperature: the
                    // exchanger is fouling beyond the loop's reach.
                    EpisodeClass::ProcessUpset
                } else if self.tracking(relation).is_some()
                    && self.saturated_loops.contains(relation)
                    && !contradicted
                {
                    // A loop missing its setpoint with its actuator at the end of its
                    // range, its sensor showing no fault of its own and the other physics
                    // agreeing: the process has moved beyond the loop's reach. Without the
                    // actuator at its end, a stuck actuator and a measurement that differs
                    // from what the loop sees look alike: a human judges.
                    EpisodeClass::ProcessUpset
                } else {
                    EpisodeClass::Unknown
                }
            }
            DetectionKind::LimitHigh | DetectionKind::LimitLow => {
                let signal = evidence.signals.first().map(String::as_str).unwrap_or("");
                if own_signature(signal) {
                    EpisodeClass::SensorFault
                } else if in_broken_relation(signal) || !evidence.trusted {
                    EpisodeClass::Unknown
                } else {
                    EpisodeClass::ProcessUpset
                }
            }
            DetectionKind::Gap => EpisodeClass::Unknown,
            DetectionKind::Multivariate => {
                let wear_indicator = evidence
                    .signals
                    .first()
                    .and_then(|s| self.plant.signal(s))
                    .is_some_and(|s| s.wear_indicator);
                if !evidence.trusted
                    || (wear_indicator && self.multivariate_hint == EpisodeClass::SensorFault)
                {
                    // One wear indicator alone: the equipment wearing or its sensor
                    // drifting look the same in the data.
                    EpisodeClass::Unknown
                } else {
                    self.multivariate_hint
                }
            }
        }
    }

    /// Revises the class of every active episode (evidence changed); each change is an
    /// event.
    fn reclassify(&mut self, events: &mut Vec<Event>, t_ms: i64) {
        let classes: Vec<(Key, EpisodeClass)> = self
            .active
            .iter()
            .map(|(k, d)| {
                (
                    k.clone(),
                    self.classify(d.kind, &d.evidence, d.value, d.raised_ms, t_ms),
                )
            })
            .collect();
        for (k, class) in classes {
            if let Some(d) = self.active.get_mut(&k)
                && d.class != class
            {
                events.push(Event::Reclassified {
                    id: d.id,
                    t_ms,
                    class,
                    was: d.class,
                });
                d.class = class;
            }
        }
    }

    /// Detections currently raised.
    pub fn active(&self) -> impl Iterator<Item = &Detection> {
        self.active.values()
    }

    pub fn get(&self, id: u64) -> Option<&Detection> {
        self.active.values().find(|d| d.id == id)
    }

    /// Episodes raised so far, by kind.
    pub fn counts(&self) -> &BTreeMap<DetectionKind, u64> {
        &self.counts
    }

    /// Signals named by an active physics detection: their values contradict the physics.
    pub fn suspect_signals(&self) -> HashSet<&str> {
        self.active
            .values()
            .filter(|d| d.kind == DetectionKind::Physics)
            .flat_map(|d| d.evidence.signals.iter().map(String::as_str))
            .collect()
    }

    /// What an episode raised on one sample rests on: the signal, the device that sent it,
    /// and whether it is trusted (verified, and not part of a broken relation).
    fn sample_evidence(&self, s: &Sample) -> Evidence {
        Evidence {
            signals: vec![s.signal.to_string()],
            relation: None,
            devices: vec![s.provenance.device.clone()],
            trusted: s.provenance.trust == Trust::Verified
                && !self.suspect_signals().contains(&*s.signal),
        }
    }

    /// Checks one accepted sample (in time order per signal).
    pub fn observe(&mut self, s: &Sample) -> Vec<Event> {
        let mut events = Vec::new();
        let plant = self.plant.clone();
        let Some(sig) = plant.signal(&s.signal) else {
            return events;
        };
        // Nothing here allocates unless an episode on the signal opens or closes (an open
        // one's key is the plant's shared id): this runs for every sample the plant sends.
        let m = self.memory.entry(s.signal.clone()).or_default();

        // Operating limits, debounced.
        let (lo, hi) = (sig.alarm[0], sig.alarm[1]);
        let outside = s.value > hi || s.value < lo;
        if outside {
            if m.outside == 0 {
                m.outside_since = Some(s.t_ms);
            }
            m.outside += 1;
            m.inside = 0;
        } else {
            m.inside += 1;
            m.outside = 0;
        }
        let (kind, limit) = if s.value > hi {
            (DetectionKind::LimitHigh, hi)
        } else {
            (DetectionKind::LimitLow, lo)
        };
        let raise_limit = outside && m.outside >= LIMIT_DEBOUNCE;
        if raise_limit && m.outside == LIMIT_DEBOUNCE {
            m.limit_crossed_ms = m.outside_since;
        }
        let clear_limit = m.inside >= LIMIT_CLEAR;

        // Rate of change.
        let mut rate_violation = None;
        if let Some((t0, v0)) = m.last {
            let dt = (s.t_ms - t0) as f64 / 1000.0;
            if dt > 0.0 {
                let rate = (s.value - v0) / dt;
                if rate.abs() > sig.max_rate {
                    rate_violation = Some(rate);
                    m.last_rate_violation = Some(s.t_ms);
                }
            }
        }
        let rate_expired = m.last_rate_violation.is_some_and(|t| s.t_ms - t > HOLD_MS);

        // Stuck value.
        match m.last {
            Some((_, v0)) if v0 == s.value => {
                m.same_since_ms.get_or_insert(s.t_ms);
            }
            _ => m.same_since_ms = Some(s.t_ms),
        }
        let stuck_for_ms = m.same_since_ms.map_or(0, |t| s.t_ms - t);
        let stuck = sig
            .stuck_after_s
            .is_some_and(|lim| stuck_for_ms >= i64::from(lim) * 1000);
        m.last = Some((s.t_ms, s.value));

        // Whether any episode is open on the signal: if none, there is nothing to clear.
        // (A kind raised below is never one cleared below for the same sample.)
        let open = self.open.contains_key(&*s.signal);
        if raise_limit {
            let word = if kind == DetectionKind::LimitHigh {
                "above"
            } else {
                "below"
            };
            self.raise_on_sample(&mut events, kind, s, s.value, limit, || {
                format!(
                    "{} = {:.3} {} {word} its operating limit {limit}",
                    s.signal, s.value, sig.unit
                )
            });
        } else if clear_limit && open {
            self.clear_on_sample(&mut events, DetectionKind::LimitHigh, s);
            self.clear_on_sample(&mut events, DetectionKind::LimitLow, s);
        }
        if let Some(rate) = rate_violation {
            self.raise_on_sample(
                &mut events,
                DetectionKind::Rate,
                s,
                rate,
                sig.max_rate,
                || {
                    format!(
                        "{} changed at {rate:.3} {}/s, more than the plausible {}",
                        s.signal, sig.unit, sig.max_rate
                    )
                },
            );
        } else if rate_expired && open {
            self.clear_on_sample(&mut events, DetectionKind::Rate, s);
        }
        if stuck {
            let limit = f64::from(sig.stuck_after_s.unwrap_or(0));
            self.raise_on_sample(&mut events, DetectionKind::Stuck, s, s.value, limit, || {
                format!(
                    "{} has read exactly {} for {} s",
                    s.signal,
                    s.value,
                    stuck_for_ms / 1000
                )
            });
        } else if open {
            self.clear_on_sample(&mut events, DetectionKind::Stuck, s);
        }
        events
    }

    /// Checks one evaluation of a physics relation.
    pub fn observe_residual(&mut self, r: &Residual, devices: Vec<String>) -> Vec<Event> {
        let mut events = Vec::new();
        let key: Key = (DetectionKind::Physics, r.relation.as_str().into());
        let was_saturated = if r.actuator_saturated {
            !self.saturated_loops.insert(r.relation.clone())
        } else {
            self.saturated_loops.remove(&r.relation)
        };
        if was_saturated != r.actuator_saturated && self.active.contains_key(&key) {
            self.reclassify(&mut events, r.t_ms);
        }
        if r.alarm {
            self.relation_last_alarm.insert(r.relation.clone(), r.t_ms);
            let stat = r.cusum_pos.max(r.cusum_neg);
            self.raise(
                &mut events,
                key,
                r.t_ms,
                r.residual,
                stat,
                |d| {
                    (
                        match (d.tracking(&r.relation), r.estimate) {
                            (Some((measured, setpoint, tolerance)), _) => format!(
                                "{}: {measured} is {:+.3} off {setpoint} on average over the window, beyond the loop's tolerance of {tolerance}",
                                r.relation, r.residual
                            ),
                            (None, Some(effectiveness)) => d.heat_balance_message(r, effectiveness),
                            (None, None) => format!(
                                "{} does not hold: residual {:+.4} ({:+.1} sigma), CUSUM alarm",
                                r.relation, r.residual, r.z
                            ),
                        },
                        Evidence {
                            signals: r.signals.clone(),
                            relation: Some(r.relation.clone()),
                            devices,
                            // A broken relation is evidence that some of its data is wrong.
                            trusted: false,
                        },
                    )
                },
            );
        } else if self
            .relation_last_alarm
            .get(&r.relation)
            .is_some_and(|t| r.t_ms - t > 5 * HOLD_MS)
        {
            self.clear(&mut events, &key, r.t_ms);
        }
        events
    }

    /// Checks one score of the live multivariate model (see [`live::Live`]): an episode
    /// is raised when the score crosses the model's threshold and cleared once it has
    /// stayed below for the hold time. `class` and `contributors` (largest first) are the
    /// model's own reading of the episode so far; `trusted` says whether every
    /// contributor's value can be trusted; `devices` are the contributors' devices.
    /// `model` names the model (the "relation" the signals broke).
    #[allow(
        clippy::too_many_arguments,
        reason = "the score and each part of the evidence it rests on"
    )]
    pub fn observe_multivariate(
        &mut self,
        t_ms: i64,
        score: &multivariate::Score,
        threshold: f64,
        class: EpisodeClass,
        model: &str,
        contributors: Vec<String>,
        devices: Vec<String>,
        trusted: bool,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        let key: Key = (DetectionKind::Multivariate, "pca".into());
        if score.flag {
            self.multivariate_last_alarm = Some(t_ms);
            if self.multivariate_hint != class {
                self.multivariate_hint = class;
                self.reclassify(&mut events, t_ms);
            }
            self.raise(
                &mut events,
                key,
                t_ms,
                score.score,
                threshold,
                |_| {
                    (
                        format!(
                            "the signals left their learnt normal behaviour: score {:.2} over {:.2} (T² {:.1}, SPE {:.2}); most from {}",
                            score.score,
                            threshold,
                            score.t2,
                            score.spe,
                            contributors.join(", ")
                        ),
                        Evidence {
                            signals: contributors,
                            relation: Some(model.to_string()),
                            devices,
                            trusted,
                        },
                    )
                },
            );
        } else if self
            .multivariate_last_alarm
            .is_some_and(|t| t_ms - t > HOLD_MS)
        {
            self.clear(&mut events, &key, t_ms);
        }
        events
    }

    /// Raises a gap for every signal whose newest value is more than `limit_ms` behind
    /// `now_ms` (the newest data twinguard holds), or that has had no value for that long
    /// since data started; clears it when data returns. `last` gives each signal's newest
    /// time and device. A gap is not evidence about the process: it is never trusted.
    /// A source's connection is lost (an OPC UA session): a gap in every signal it feeds,
    /// raised at once rather than after the per-signal gap limit, until it is restored.
    pub fn source_lost(
        &mut self,
        source: &str,
        signals: Vec<String>,
        now_ms: i64,
        reason: &str,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        self.raise(
            &mut events,
            (DetectionKind::Gap, format!("source:{source}").into()),
            now_ms,
            0.0,
            0.0,
            |_| {
                (
                    format!(
                        "connection to source {source} lost ({reason}): no data until it is restored"
                    ),
                    Evidence {
                        signals,
                        relation: None,
                        devices: vec![source.to_string()],
                        trusted: false,
                    },
                )
            },
        );
        events
    }

    /// The source is connected again: its gap clears.
    pub fn source_restored(&mut self, source: &str, now_ms: i64) -> Vec<Event> {
        let mut events = Vec::new();
        self.clear(
            &mut events,
            &(DetectionKind::Gap, format!("source:{source}").into()),
            now_ms,
        );
        events
    }

    /// Raises a gap for each signal whose newest value (its time, and the device that
    /// sent it) is more than `limit_ms` behind `now_ms`, or that has none though data
    /// started that long ago; clears the gaps of signals that have caught up. Allocates
    /// only for signals that are behind, and for the episodes it closes.
    pub fn check_gaps<'a>(
        &mut self,
        last: impl Iterator<Item = (&'a str, Option<(i64, &'a str)>)>,
        now_ms: i64,
        limit_ms: i64,
    ) -> Vec<Event> {
        let started = *self.first_data_ms.get_or_insert(now_ms);
        let mut events = Vec::new();
        for (signal, newest) in last {
            let behind = match newest {
                Some((t, _)) => now_ms - t,
                None => now_ms - started,
            };
            let open = self.open.contains_key(signal);
            if behind > limit_ms {
                self.raise(
                    &mut events,
                    (DetectionKind::Gap, signal.into()),
                    now_ms,
                    behind as f64 / 1000.0,
                    limit_ms as f64 / 1000.0,
                    |_| {
                        // Worded to stay true for as long as the episode is open.
                        let message = match newest {
                            Some(_) => {
                                format!("no data for {signal} for more than {} s", limit_ms / 1000)
                            }
                            None => format!(
                                "no data for {signal} since data started, more than {} s ago",
                                limit_ms / 1000
                            ),
                        };
                        let evidence = Evidence {
                            signals: vec![signal.to_string()],
                            relation: None,
                            devices: newest.map(|(_, d)| vec![d.to_string()]).unwrap_or_default(),
                            trusted: false,
                        };
                        (message, evidence)
                    },
                );
            } else if open {
                self.clear(&mut events, &(DetectionKind::Gap, signal.into()), now_ms);
            }
        }
        events
    }

    /// Opens the episode `key` unless it is open already; `describe` gives its message
    /// and evidence, made only when it opens (a sample keeps reporting what is open).
    fn raise(
        &mut self,
        events: &mut Vec<Event>,
        key: Key,
        t_ms: i64,
        value: f64,
        limit: f64,
        describe: impl FnOnce(&Detectors) -> (String, Evidence),
    ) {
        if self.active.contains_key(&key) {
            return;
        }
        let (message, evidence) = describe(self);
        if matches!(key.0, DetectionKind::Stuck | DetectionKind::Rate) {
            self.signatures
                .insert(key.1.to_string(), (t_ms, key.0 == DetectionKind::Rate));
        }
        let class = self.classify(key.0, &evidence, value, t_ms, t_ms);
        let d = Detection {
            id: self.next_id,
            kind: key.0,
            raised_ms: t_ms,
            value,
            limit,
            message,
            evidence,
            class,
        };
        self.next_id += 1;
        *self.counts.entry(key.0).or_default() += 1;
        *self.open.entry(key.1.clone()).or_default() += 1;
        events.push(Event::Raised(d.clone()));
        self.active.insert(key, d);
        self.reclassify(events, t_ms);
    }

    /// [`Detectors::raise`] for an episode of `kind` on one sample's signal, resting on
    /// that sample (its message made only if the episode opens).
    fn raise_on_sample(
        &mut self,
        events: &mut Vec<Event>,
        kind: DetectionKind,
        s: &Sample,
        value: f64,
        limit: f64,
        message: impl FnOnce() -> String,
    ) {
        let key = (kind, s.signal.clone());
        self.raise(events, key, s.t_ms, value, limit, |d| {
            (message(), d.sample_evidence(s))
        });
    }

    /// Closes the episode of `kind` on one sample's signal, if it is open.
    fn clear_on_sample(&mut self, events: &mut Vec<Event>, kind: DetectionKind, s: &Sample) {
        self.clear(events, &(kind, s.signal.clone()), s.t_ms);
    }

    fn clear(&mut self, events: &mut Vec<Event>, key: &Key, t_ms: i64) {
        if let Some(d) = self.active.remove(key) {
            if let Some(n) = self.open.get_mut(&key.1) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.open.remove(&key.1);
                }
            }
            events.push(Event::Cleared { id: d.id, t_ms });
            self.reclassify(events, t_ms);
        }
    }
}
