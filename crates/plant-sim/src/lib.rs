//! The reference plant: a bottling line simulated from first principles at 1 Hz.
//!
//! - [`Sim`] holds the physical state (tank level, pump speed and bearing wear, pasteuriser
//!   temperature and fouling, filler speed, energy counters) and advances it one second per
//!   [`Sim::step`], returning the measured values of every signal in the plant file.
//! - [`Fault`] injects sensor faults (stuck, drift, bias, spike) and process faults (valve
//!   sticking, fouling) at given times.
//! - [`PlantCommand`] is what the plant accepts from its control system: setpoint writes, a
//!   line stop to the safe state, a restart, and pump maintenance.
//!
//! The simulation is deterministic for a seed: it uses its own small generator
//! ([`rng::Rng`]) whose output never changes with a dependency upgrade, so seeded results in
//! benchmarks and tests stay comparable across versions.

pub mod fault;
pub mod rng;
pub mod site;

use std::collections::HashMap;

use plant_model::Plant;
pub use plant_model::PlantCommand;
use serde::Serialize;

pub use fault::{Fault, FaultKind, FaultParseError};
use rng::Rng;

/// 2026-01-01T00:00:00Z, the default start of simulated time.
pub const DEFAULT_START_MS: i64 = 1_767_225_600_000;

const G: f64 = 9.81;
const RHO: f64 = 1000.0;
const CP: f64 = 4.0; // kJ/(kg K), a dairy/juice product
const N0: f64 = 1750.0; // rpm, pump rated speed
const H0: f64 = 45.0; // m, shut-off head at rated speed
const K_PUMP: f64 = 0.02; // m/(m3/h)^2, pump curve droop
const H_STATIC: f64 = 10.0; // m, static lift + filler back-pressure
const K_SYS: f64 = 0.06; // m/(m3/h)^2, line + heat-exchanger resistance
const TANK_AREA: f64 = 2.0; // m2
const INFLOW_MAX: f64 = 25.0; // m3/h at full valve opening
const BOTTLE_L: f64 = 0.5;
const STEAM_MAX_KW: f64 = 600.0;
const H_FG: f64 = 2100.0; // kJ/kg, latent heat of the steam
const REGEN: f64 = 0.8; // regenerative section recovers this share of the heating duty
const HOLDUP_KJ_PER_K: f64 = 200.0;
const MAINTENANCE_S: u64 = 2 * 3600;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SimError {
    #[error("plant file lacks signal {0:?} that the reference simulator produces")]
    MissingSignal(String),
    #[error("plant file lacks setpoint {0:?} that the reference simulator needs")]
    MissingSetpoint(String),
    #[error("unknown setpoint {0:?}")]
    UnknownSetpoint(String),
    #[error("setpoint {setpoint}: value {value} is not a finite number")]
    NotFinite { setpoint: String, value: f64 },
    #[error("the look-ahead needs a recent finite value of signal {0:?}")]
    NotObserved(String),
    #[error(
        "a single line has no order book: order {0:?} is rerouted by a site (`plant_sim::site`)"
    )]
    NoOrderBook(String),
    #[error("order {order:?}: {why}")]
    Order { order: String, why: String },
    #[error("the site has no line {0:?}")]
    UnknownLine(String),
}

/// The operating conditions a plant runs in, beside its controls: the climate, the
/// temperature of the product arriving, and the production plan that sets the filler's
/// speed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conditions {
    /// Daily mean of the ambient temperature, °C.
    pub ambient_mean_c: f64,
    /// Amplitude of its daily cycle, °C.
    pub ambient_swing_c: f64,
    /// Added to the inlet product temperature, °C.
    pub inlet_offset_c: f64,
    /// Filler speed setpoints the plant's own production plan writes, in time order.
    pub plan: Vec<PlanStep>,
}

/// From `at_s` seconds of simulated time on, the production plan runs the filler at
/// `filler_speed` bottles a minute.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PlanStep {
    pub at_s: u64,
    pub filler_speed: f64,
}

impl Default for Conditions {
    /// The reference conditions: 20 °C ± 5 °C over the day, no inlet offset, the filler
    /// at its initial setpoint throughout.
    fn default() -> Conditions {
        Conditions {
            ambient_mean_c: 20.0,
            ambient_swing_c: 5.0,
            inlet_offset_c: 0.0,
            plan: Vec::new(),
        }
    }
}

impl Conditions {
    /// Conditions drawn from `seed` (a generator of their own, so the plant's noise and
    /// bearing life for that seed are those of the reference conditions): ambient mean
    /// 8 to 30 °C with a daily swing of 2 to 8 °C, inlet offset −6 to +6 °C, and a plan
    /// that sets the filler to 350 to 600 bottles a minute (steps of 25) from the start
    /// and again every 3 to 8 hours, for `hours` (at most 30 days).
    pub fn varied(seed: u64, hours: f64) -> Conditions {
        let mut rng = Rng::new(seed ^ 0x636f_6e64_6974_696f);
        let ambient_mean_c = rng.uniform(8.0, 30.0);
        let ambient_swing_c = rng.uniform(2.0, 8.0);
        let inlet_offset_c = rng.uniform(-6.0, 6.0);
        let end_s = (hours.clamp(0.0, 720.0) * 3600.0) as u64;
        let mut plan = Vec::new();
        let mut at_s = 0;
        while at_s <= end_s {
            let steps = (rng.uniform(0.0, 11.0).floor()).min(10.0);
            plan.push(PlanStep {
                at_s,
                filler_speed: 350.0 + 25.0 * steps,
            });
            at_s += (rng.uniform(3.0, 8.0) * 3600.0) as u64;
        }
        Conditions {
            ambient_mean_c,
            ambient_swing_c,
            inlet_offset_c,
            plan,
        }
    }
}

/// What the plant observed: recent means of its measured signals and the setpoints it
/// holds, by id. A look-ahead model starts from it ([`Sim::lookahead`]).
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub values: HashMap<String, f64>,
    pub setpoints: HashMap<String, f64>,
}

impl Observed {
    /// The means of `ticks` by signal id, as a twin's recent means would give them (the
    /// plant's own measurements, noise and faults included); no setpoints.
    pub fn means(plant: &Plant, ticks: &[Tick]) -> Observed {
        let mut sums = vec![0.0; plant.signals.len()];
        for tick in ticks {
            for (sum, v) in sums.iter_mut().zip(&tick.values) {
                *sum += v;
            }
        }
        let n = ticks.len().max(1) as f64;
        Observed {
            values: plant
                .signals
                .iter()
                .zip(&sums)
                .map(|(s, sum)| (s.id.clone(), sum / n))
                .collect(),
            setpoints: HashMap::new(),
        }
    }

    fn value(&self, id: &str) -> Result<f64, SimError> {
        self.values
            .get(id)
            .copied()
            .filter(|v| v.is_finite())
            .ok_or_else(|| SimError::NotObserved(id.to_string()))
    }
}

/// What a look-ahead run predicts over its horizon.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Forecast {
    pub energy_kwh: f64,
    pub good_bottles: f64,
    pub filled_bottles: f64,
    pub quality_violation_s: u64,
    /// Lowest product temperature on the way, °C.
    pub min_product_temp: f64,
    /// Highest reject rate while filling, %.
    pub max_reject_pct: f64,
    pub pump_failed: bool,
}

impl Forecast {
    /// Energy per good bottle, Wh (infinite when nothing good is filled).
    pub fn wh_per_good_bottle(&self) -> f64 {
        if self.good_bottles > 0.0 {
            self.energy_kwh * 1000.0 / self.good_bottles
        } else {
            f64::INFINITY
        }
    }
}

/// Ground truth that the twin cannot see, for scoring and tests.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Truth {
    pub bearing_wear: f64,
    pub pump_failed: bool,
    pub line_stopped: bool,
    pub in_maintenance: bool,
    pub fouling: f64,
    pub failures: u32,
    pub energy_kwh: f64,
    pub good_bottles: f64,
    /// Bottles filled, good or rejected.
    pub filled_bottles: f64,
    /// Seconds outside the quality limits: product under-pasteurised (below 72 °C) or
    /// rejects above 5 % of what is filled.
    pub quality_violation_s: u64,
}

/// Product below this is under-pasteurised, °C.
pub const PASTEURISATION_MIN_C: f64 = 72.0;
/// Rejects above this share of the filled bottles break the quality limit, %.
pub const REJECT_LIMIT_PCT: f64 = 5.0;

/// One second of the plant: the time and the measured value of every plant-file signal,
/// in plant-file order.
#[derive(Debug, Clone)]
pub struct Tick {
    pub t_ms: i64,
    pub values: Vec<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Var {
    TankLevel,
    TankInflow,
    TankValve,
    PumpSpeed,
    PumpFlow,
    PumpPressure,
    PumpCurrent,
    PumpPower,
    BearingTemp,
    Vibration,
    ProductTemp,
    InletTemp,
    SteamValve,
    SteamFlow,
    HeatDuty,
    Bpm,
    RejectRate,
    Recirc,
    GoodBottles,
    TotalPower,
    TotalEnergy,
    Ambient,
}

const VARS: [(Var, &str, f64); 22] = [
    (Var::TankLevel, "tank.level", 0.002),
    (Var::TankInflow, "tank.inflow", 0.08),
    (Var::TankValve, "tank.inlet_valve", 0.1),
    (Var::PumpSpeed, "pump.speed", 2.0),
    (Var::PumpFlow, "pump.flow", 0.08),
    (Var::PumpPressure, "pump.discharge_pressure", 0.01),
    (Var::PumpCurrent, "pump.motor_current", 0.03),
    (Var::PumpPower, "pump.power", 0.02),
    (Var::BearingTemp, "pump.bearing_temp", 0.1),
    (Var::Vibration, "pump.vibration", 0.05),
    (Var::ProductTemp, "past.product_temp", 0.04),
    (Var::InletTemp, "past.inlet_temp", 0.05),
    (Var::SteamValve, "past.steam_valve", 0.1),
    (Var::SteamFlow, "past.steam_flow", 2.0),
    (Var::HeatDuty, "past.heat_duty", 1.0),
    (Var::Bpm, "filler.bpm", 1.0),
    (Var::RejectRate, "filler.reject_rate", 0.03),
    (Var::Recirc, "filler.recirc_flow", 0.08),
    (Var::GoodBottles, "filler.good_bottles", 0.0),
    (Var::TotalPower, "energy.power", 1.0),
    (Var::TotalEnergy, "energy.total", 0.0),
    (Var::Ambient, "energy.ambient_temp", 0.05),
];

const SETPOINTS: [&str; 4] = [
    "tank.level_sp",
    "pump.speed_sp",
    "past.temp_sp",
    "filler.speed_sp",
];

/// The simulated bottling line.
#[derive(Debug, Clone)]
pub struct Sim {
    rng: Rng,
    t_s: u64,
    start_ms: i64,
    /// plant-file signal index -> simulated variable, its noise sigma, instrument range
    outputs: Vec<(Var, f64, [f64; 2])>,
    var_index: HashMap<&'static str, usize>,
    setpoints: HashMap<String, f64>,
    held_setpoints: Option<HashMap<String, f64>>,
    safe: HashMap<String, f64>,
    faults: Vec<Fault>,
    // physical state
    level: f64,
    inlet_valve: f64,
    level_integral: f64,
    speed: f64,
    wear: f64,
    wear_rate: f64,
    failed: bool,
    failures: u32,
    maintenance_until: Option<u64>,
    bearing_temp: f64,
    product_temp: f64,
    steam_valve: f64,
    temp_integral: f64,
    fouling: f64,
    filler_speed: f64,
    good_bottles: f64,
    filled_bottles: f64,
    quality_violation_s: u64,
    energy_kwh: f64,
    /// last measured value per plant-file signal (for stuck faults)
    last_measured: Vec<f64>,
    state: Snapshot,
    conditions: Conditions,
    /// Index of the next step of `conditions.plan`.
    plan_next: usize,
    /// A look-ahead model holds ambient and inlet temperatures at these values.
    held_weather: Option<(f64, f64)>,
}

/// Quantities derived during the last physics step.
#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    ambient: f64,
    inlet_temp: f64,
    inflow: f64,
    flow: f64,
    head: f64,
    pump_kw: f64,
    steam_kw: f64,
    bpm: f64,
    reject: f64,
    recirc: f64,
    total_kw: f64,
}

impl Sim {
    /// A plant at steady state at `start_ms`, seeded by `seed`, in the reference
    /// conditions ([`Conditions::default`]).
    pub fn new(plant: &Plant, seed: u64, start_ms: i64) -> Result<Sim, SimError> {
        Sim::with_conditions(plant, seed, start_ms, Conditions::default())
    }

    /// A plant at steady state at `start_ms`, seeded by `seed`, in the given operating
    /// conditions (climate, inlet temperature, production plan).
    pub fn with_conditions(
        plant: &Plant,
        seed: u64,
        start_ms: i64,
        conditions: Conditions,
    ) -> Result<Sim, SimError> {
        let mut sim = Sim::build(plant, seed, start_ms)?;
        sim.conditions = conditions;
        // Settle the controllers before time zero.
        for _ in 0..1800 {
            sim.advance_physics();
        }
        sim.good_bottles = 0.0;
        sim.filled_bottles = 0.0;
        sim.quality_violation_s = 0;
        sim.energy_kwh = 0.0;
        Ok(sim)
    }

    /// The plant's state at its setpoints, unsettled.
    fn build(plant: &Plant, seed: u64, start_ms: i64) -> Result<Sim, SimError> {
        let var_of: HashMap<&str, (Var, f64)> = VARS
            .iter()
            .map(|(v, id, sigma)| (*id, (*v, *sigma)))
            .collect();
        let mut outputs = Vec::with_capacity(plant.signals.len());
        for s in &plant.signals {
            match var_of.get(s.id.as_str()) {
                Some((v, sigma)) => outputs.push((*v, *sigma, s.range)),
                None => return Err(SimError::MissingSignal(s.id.clone())),
            }
        }
        let mut var_index = HashMap::new();
        for (_, id, _) in VARS {
            match plant.signals.iter().position(|s| s.id == id) {
                Some(i) => {
                    var_index.insert(id, i);
                }
                None => return Err(SimError::MissingSignal(id.to_string())),
            }
        }
        let mut setpoints = HashMap::new();
        let mut safe = HashMap::new();
        for id in SETPOINTS {
            let sp = plant
                .setpoint(id)
                .ok_or_else(|| SimError::MissingSetpoint(id.to_string()))?;
            setpoints.insert(id.to_string(), sp.initial);
            safe.insert(id.to_string(), sp.safe);
        }
        let mut rng = Rng::new(seed);
        let life_h = rng.uniform(30.0, 60.0);
        Ok(Sim {
            wear_rate: wear_rate_for_life(life_h),
            rng,
            t_s: 0,
            start_ms,
            last_measured: vec![f64::NAN; outputs.len()],
            outputs,
            var_index,
            speed: sp(&setpoints, "pump.speed_sp"),
            level: sp(&setpoints, "tank.level_sp"),
            filler_speed: sp(&setpoints, "filler.speed_sp"),
            product_temp: sp(&setpoints, "past.temp_sp"),
            setpoints,
            held_setpoints: None,
            safe,
            faults: Vec::new(),
            inlet_valve: 0.5,
            level_integral: 0.0,
            wear: 0.0,
            failed: false,
            failures: 0,
            maintenance_until: None,
            bearing_temp: 40.0,
            steam_valve: 0.4,
            temp_integral: 0.0,
            fouling: 0.0,
            good_bottles: 0.0,
            filled_bottles: 0.0,
            quality_violation_s: 0,
            energy_kwh: 0.0,
            state: Snapshot::default(),
            conditions: Conditions::default(),
            plan_next: 0,
            held_weather: None,
        })
    }

    /// A look-ahead model of the plant, started from what was observed of it: the
    /// physics of the reference plant without measurement noise or faults, its state
    /// taken from recent means of the measured signals, the states no sensor shows
    /// estimated (bearing wear from vibration at the running speed, heat-exchanger
    /// fouling from the pasteuriser's heat balance, the controllers' integral terms from
    /// their valves, so that they start where the plant's are), and ambient and inlet
    /// temperatures held at their observed values. Setpoints the observation does not
    /// give keep the plant file's initial values, but for the filler's (see below).
    pub fn lookahead(plant: &Plant, observed: &Observed) -> Result<Sim, SimError> {
        let mut sim = Sim::build(plant, 0, DEFAULT_START_MS)?;
        for (id, value) in &observed.setpoints {
            if let Some(slot) = sim.setpoints.get_mut(id)
                && value.is_finite()
            {
                *slot = *value;
            }
        }
        let v = |id: &str| observed.value(id);
        sim.level = v("tank.level")?.clamp(0.0, 3.0);
        sim.inlet_valve = (v("tank.inlet_valve")? / 100.0).clamp(0.0, 1.0);
        sim.speed = v("pump.speed")?.max(0.0);
        let n = sim.speed / N0;
        sim.wear = if sim.speed > 1.0 {
            ((v("pump.vibration")? - 1.5 * n * n) / 9.0)
                .max(0.0)
                .sqrt()
                .min(0.99)
        } else {
            0.0
        };
        sim.wear_rate = wear_rate_for_life(45.0);
        sim.bearing_temp = v("pump.bearing_temp")?;
        sim.product_temp = v("past.product_temp")?;
        sim.steam_valve = (v("past.steam_valve")? / 100.0).clamp(0.0, 1.0);
        let ambient = v("energy.ambient_temp")?;
        let inlet_temp = v("past.inlet_temp")?;
        sim.held_weather = Some((ambient, inlet_temp));
        // At steady state the heat that reaches the product is what it takes away.
        let m_dot = v("pump.flow")?.max(0.0) * RHO / 3600.0;
        let duty = v("past.heat_duty")?;
        let taken = m_dot * CP * (1.0 - REGEN) * (sim.product_temp - inlet_temp)
            + 0.2 * (sim.product_temp - ambient);
        sim.fouling = if duty > 1.0 {
            (1.0 - taken / duty).clamp(0.0, 0.8)
        } else {
            0.0
        };
        // While product recirculates the filler runs at its setpoint, which is what it
        // fills. While it is starved its setpoint is unseen: unless the observation
        // gives it, the model assumes the most the filler's envelope allows, so that more
        // product is predicted to fill more bottles.
        let bpm = v("filler.bpm")?.max(0.0);
        let given = observed
            .setpoints
            .get("filler.speed_sp")
            .copied()
            .filter(|v| v.is_finite());
        let filler_sp = if v("filler.recirc_flow")? > 0.1 {
            given.unwrap_or(bpm)
        } else {
            given
                .or_else(|| plant.setpoint("filler.speed_sp").map(|s| s.max))
                .unwrap_or(bpm)
                .max(bpm)
        };
        sim.setpoints
            .insert("filler.speed_sp".to_string(), filler_sp);
        sim.filler_speed = filler_sp;
        let err = sp(&sim.setpoints, "tank.level_sp") - sim.level;
        sim.level_integral = ((sim.inlet_valve - 0.5 - 2.0 * err) / 0.01).clamp(-200.0, 200.0);
        let terr = sp(&sim.setpoints, "past.temp_sp") - sim.product_temp;
        sim.temp_integral = ((sim.steam_valve - 0.35 - 0.05 * terr) / 0.002).clamp(-3000.0, 3000.0);
        Ok(sim)
    }

    /// Runs the plant `seconds` ahead without measuring it, and says what happened.
    pub fn forecast(&mut self, seconds: u64) -> Forecast {
        let before = self.truth();
        let mut min_product_temp = f64::INFINITY;
        let mut max_reject_pct: f64 = 0.0;
        for _ in 0..seconds {
            self.t_s += 1;
            self.advance_physics();
            min_product_temp = min_product_temp.min(self.product_temp);
            if self.state.bpm > 0.0 {
                max_reject_pct = max_reject_pct.max(self.state.reject);
            }
        }
        let after = self.truth();
        Forecast {
            energy_kwh: after.energy_kwh - before.energy_kwh,
            good_bottles: after.good_bottles - before.good_bottles,
            filled_bottles: after.filled_bottles - before.filled_bottles,
            quality_violation_s: after.quality_violation_s - before.quality_violation_s,
            min_product_temp,
            max_reject_pct,
            pump_failed: after.pump_failed,
        }
    }

    pub fn add_fault(&mut self, fault: Fault) {
        self.faults.push(fault);
    }

    /// Current simulated time in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        self.start_ms + (self.t_s as i64) * 1000
    }

    pub fn setpoint(&self, id: &str) -> Option<f64> {
        self.setpoints.get(id).copied()
    }

    pub fn truth(&self) -> Truth {
        Truth {
            bearing_wear: self.wear,
            pump_failed: self.failed,
            line_stopped: self.held_setpoints.is_some(),
            in_maintenance: self.maintenance_until.is_some(),
            fouling: self.fouling,
            failures: self.failures,
            energy_kwh: self.energy_kwh,
            good_bottles: self.good_bottles,
            filled_bottles: self.filled_bottles,
            quality_violation_s: self.quality_violation_s,
        }
    }

    /// Applies a command from the control system.
    pub fn apply(&mut self, cmd: &PlantCommand) -> Result<(), SimError> {
        match cmd {
            PlantCommand::SetSetpoint { setpoint, value } => {
                if !value.is_finite() {
                    return Err(SimError::NotFinite {
                        setpoint: setpoint.clone(),
                        value: *value,
                    });
                }
                let target = match self.held_setpoints.as_mut() {
                    // While stopped, a write changes what the restart returns to.
                    Some(held) => held,
                    None => &mut self.setpoints,
                };
                match target.get_mut(setpoint) {
                    Some(v) => *v = *value,
                    None => return Err(SimError::UnknownSetpoint(setpoint.clone())),
                }
            }
            PlantCommand::StopLine => {
                if self.held_setpoints.is_none() {
                    let before = std::mem::replace(&mut self.setpoints, self.safe.clone());
                    self.held_setpoints = Some(before);
                }
            }
            PlantCommand::StartLine => {
                if let Some(held) = self.held_setpoints.take() {
                    self.setpoints = held;
                }
            }
            PlantCommand::Maintenance => {
                // A request during maintenance does not extend it.
                if self.maintenance_until.is_none() {
                    self.maintenance_until = Some(self.t_s + MAINTENANCE_S);
                }
            }
            PlantCommand::TakeOrder { order, .. } => {
                return Err(SimError::NoOrderBook(order.clone()));
            }
        }
        Ok(())
    }

    /// Advances one second and returns the measurements at the new time.
    pub fn step(&mut self) -> Tick {
        self.t_s += 1;
        self.advance_physics();
        self.measure()
    }

    fn advance_physics(&mut self) {
        let dt = 1.0;
        let t = self.t_s as f64;
        let c = &self.conditions;
        let (ambient, inlet_temp) = match self.held_weather {
            Some(held) => held,
            None => {
                let ambient = c.ambient_mean_c
                    + c.ambient_swing_c
                        * (2.0 * std::f64::consts::PI * (t / 86_400.0 - 0.25)).sin();
                (ambient, 18.0 + c.inlet_offset_c + 0.4 * (ambient - 20.0))
            }
        };
        while let Some(step) = self.conditions.plan.get(self.plan_next)
            && step.at_s <= self.t_s
        {
            let target = match self.held_setpoints.as_mut() {
                Some(held) => held,
                None => &mut self.setpoints,
            };
            target.insert("filler.speed_sp".to_string(), step.filler_speed);
            self.plan_next += 1;
        }

        // Maintenance: pump stopped, bearing replaced at the end.
        if let Some(until) = self.maintenance_until
            && self.t_s >= until
        {
            {
                self.maintenance_until = None;
                self.wear = 0.0;
                self.failed = false;
                let life_h = self.rng.uniform(30.0, 60.0);
                self.wear_rate = wear_rate_for_life(life_h);
            }
        }
        let pump_available = !self.failed && self.maintenance_until.is_none();

        // Pump speed ramps towards its setpoint (50 rpm/s); zero when tripped.
        let speed_target = if pump_available {
            sp(&self.setpoints, "pump.speed_sp").clamp(0.0, N0 * 1.1)
        } else {
            0.0
        };
        self.speed += (speed_target - self.speed).clamp(-50.0 * dt, 50.0 * dt);
        let n = (self.speed / N0).max(0.0);

        // Operating point: pump curve meets system curve (fouling adds resistance).
        let k_sys = K_SYS * (1.0 + 0.5 * self.fouling);
        let head_avail = H0 * n * n + self.level - H_STATIC;
        let flow = if head_avail > 0.0 {
            (head_avail / (K_PUMP + k_sys)).sqrt()
        } else {
            0.0
        };
        let head = H_STATIC + k_sys * flow * flow;

        // Filler takes what it can; the rest returns to the tank.
        let filler_target = sp(&self.setpoints, "filler.speed_sp").max(0.0);
        self.filler_speed += (filler_target - self.filler_speed).clamp(-10.0 * dt, 10.0 * dt);
        let flow_bpm = flow * 1000.0 / BOTTLE_L / 60.0;
        let bpm = self.filler_speed.min(flow_bpm).max(0.0);
        let filled_flow = bpm * BOTTLE_L * 60.0 / 1000.0;
        let recirc = (flow - filled_flow).max(0.0);

        // Tank: PI level control on the inlet valve, mass balance for the level.
        let level_sp = sp(&self.setpoints, "tank.level_sp");
        let err = level_sp - self.level;
        self.level_integral = (self.level_integral + err * dt).clamp(-200.0, 200.0);
        let valve_cmd = (0.5 + 2.0 * err + 0.01 * self.level_integral).clamp(0.0, 1.0);
        if !self.valve_stuck("tank.inlet_valve") {
            self.inlet_valve += (valve_cmd - self.inlet_valve).clamp(-0.1 * dt, 0.1 * dt);
        }
        let inflow = INFLOW_MAX * self.inlet_valve;
        self.level += (inflow + recirc - flow) / 3600.0 / TANK_AREA * dt;
        self.level = self.level.clamp(0.0, 3.0);

        // Pump power: hydraulic power over pump and motor efficiency; wear adds friction.
        let p_hyd_kw = RHO * G * (flow / 3600.0) * head / 1000.0;
        let q_norm = if n > 0.05 { flow / n / 18.0 } else { 0.0 };
        let eta = (0.75 * (1.0 - (q_norm - 1.0).powi(2))).clamp(0.3, 0.75);
        let pump_kw = if self.speed > 1.0 {
            p_hyd_kw / eta / 0.9 * (1.0 + 0.15 * self.wear) + 0.3 * n
        } else {
            0.0
        };

        // Bearing wear grows with speed cubed and with itself, until failure.
        if pump_available && self.speed > 1.0 {
            let factor: f64 = self
                .faults
                .iter()
                .filter(|f| f.kind == FaultKind::Wear && f.active(self.t_s))
                .map(|f| f.magnitude.max(0.0))
                .product();
            self.wear += self.wear_rate * factor * n.powi(3) * (1.0 + 3.0 * self.wear) * dt;
            if self.wear >= 1.0 {
                self.wear = 1.0;
                self.failed = true;
                self.failures += 1;
            }
        }
        let bearing_target = ambient + 25.0 * n * n * (1.0 + 2.5 * self.wear * self.wear);
        self.bearing_temp += (bearing_target - self.bearing_temp) * dt / 600.0;

        // Pasteuriser: PI on the steam valve, first-order heat balance, fouling.
        self.fouling += self.fouling_rate() * dt;
        let temp_sp = sp(&self.setpoints, "past.temp_sp");
        let terr = temp_sp - self.product_temp;
        let m_dot = flow * RHO / 3600.0;
        if m_dot > 0.01 {
            self.temp_integral = (self.temp_integral + terr * dt).clamp(-3000.0, 3000.0);
        }
        let steam_cmd = if m_dot > 0.01 {
            (0.35 + 0.05 * terr + 0.002 * self.temp_integral).clamp(0.0, 1.0)
        } else {
            0.0
        };
        if !self.valve_stuck("past.steam_valve") {
            self.steam_valve += (steam_cmd - self.steam_valve).clamp(-0.05 * dt, 0.05 * dt);
        }
        let steam_kw = STEAM_MAX_KW * self.steam_valve;
        let effective = steam_kw * (1.0 - self.fouling).max(0.2);
        let loss = 0.2 * (self.product_temp - ambient);
        let demand = m_dot * CP * (1.0 - REGEN) * (self.product_temp - inlet_temp);
        self.product_temp += (effective - demand - loss) / HOLDUP_KJ_PER_K * dt;

        // Quality: rejects grow with the distance from the ideal holding temperature;
        // under-pasteurised product is diverted.
        let dev = self.product_temp - 74.0;
        let mut reject = 0.3 + 0.15 * dev * dev;
        if self.product_temp < PASTEURISATION_MIN_C {
            reject += 50.0;
        }
        let reject = reject.clamp(0.0, 100.0);
        self.good_bottles += bpm / 60.0 * (1.0 - reject / 100.0) * dt;
        self.filled_bottles += bpm / 60.0 * dt;
        if bpm > 0.0 && (self.product_temp < PASTEURISATION_MIN_C || reject > REJECT_LIMIT_PCT) {
            self.quality_violation_s += dt.round() as u64;
        }
        let filler_kw = if bpm > 0.0 {
            2.0 + 5.0 * bpm / 600.0
        } else {
            0.5
        };
        let total_kw = pump_kw + steam_kw + filler_kw;
        self.energy_kwh += total_kw * dt / 3600.0;

        self.state = Snapshot {
            ambient,
            inlet_temp,
            inflow,
            flow,
            head,
            pump_kw,
            steam_kw,
            bpm,
            reject,
            recirc,
            total_kw,
        };
    }

    fn fouling_rate(&self) -> f64 {
        let base = 0.02 / 86_400.0; // 2 % effectiveness lost per day
        let injected: f64 = self
            .faults
            .iter()
            .filter(|f| f.kind == FaultKind::Fouling && f.active(self.t_s))
            .map(|f| f.magnitude / 3600.0)
            .sum();
        base + injected
    }

    fn valve_stuck(&self, valve_signal: &str) -> bool {
        self.faults.iter().any(|f| {
            f.kind == FaultKind::ValveStick && f.target == valve_signal && f.active(self.t_s)
        })
    }

    fn true_value(&self, var: Var) -> f64 {
        let s = &self.state;
        match var {
            Var::TankLevel => self.level,
            Var::TankInflow => s.inflow,
            Var::TankValve => self.inlet_valve * 100.0,
            Var::PumpSpeed => self.speed,
            Var::PumpFlow => s.flow,
            Var::PumpPressure => (RHO * G * (s.head + self.level)) / 1e5,
            Var::PumpCurrent => s.pump_kw * 1000.0 / (3f64.sqrt() * 400.0 * 0.85),
            Var::PumpPower => s.pump_kw,
            Var::BearingTemp => self.bearing_temp,
            Var::Vibration => {
                let n = self.speed / N0;
                if self.speed > 1.0 {
                    1.5 * n * n + 9.0 * self.wear * self.wear
                } else {
                    0.05
                }
            }
            Var::ProductTemp => self.product_temp,
            Var::InletTemp => s.inlet_temp,
            Var::SteamValve => self.steam_valve * 100.0,
            Var::SteamFlow => s.steam_kw / H_FG * 3600.0,
            Var::HeatDuty => s.steam_kw,
            Var::Bpm => s.bpm,
            Var::RejectRate => s.reject,
            Var::Recirc => s.recirc,
            Var::GoodBottles => self.good_bottles.floor(),
            Var::TotalPower => s.total_kw,
            Var::TotalEnergy => self.energy_kwh,
            Var::Ambient => s.ambient,
        }
    }

    fn measure(&mut self) -> Tick {
        let mut values = Vec::with_capacity(self.outputs.len());
        for i in 0..self.outputs.len() {
            let Some(&(var, sigma, range)) = self.outputs.get(i) else {
                continue;
            };
            let mut v = self.true_value(var) + sigma * self.rng.normal();
            if sigma > 0.0 {
                // Instruments quantise (4 decimals) and saturate at their range.
                v = ((v * 1e4).round() / 1e4).clamp(range[0], range[1]);
            }
            v = self.apply_sensor_faults(i, v);
            if let Some(slot) = self.last_measured.get_mut(i) {
                *slot = v;
            }
            values.push(v);
        }
        Tick {
            t_ms: self.now_ms(),
            values,
        }
    }

    fn apply_sensor_faults(&mut self, index: usize, mut v: f64) -> f64 {
        let t = self.t_s;
        for f in self.faults.iter() {
            if !f.active(t) || self.var_index.get(f.target.as_str()) != Some(&index) {
                continue;
            }
            let elapsed = (t - f.start_s) as f64;
            match f.kind {
                FaultKind::Stuck => {
                    if let Some(last) = self.last_measured.get(index).filter(|l| l.is_finite()) {
                        v = *last;
                    }
                }
                FaultKind::Drift => v += f.magnitude * elapsed / 3600.0,
                FaultKind::Bias => v += f.magnitude,
                FaultKind::Spike => {
                    if self.rng.uniform(0.0, 1.0) < 0.01 {
                        v += f.magnitude;
                    }
                }
                FaultKind::ValveStick | FaultKind::Fouling | FaultKind::Wear => {}
            }
        }
        v
    }

    /// Index of a signal in [`Tick::values`].
    pub fn signal_index(&self, id: &str) -> Option<usize> {
        self.var_index.get(id).copied()
    }
}

/// A setpoint the simulator holds (all four are checked present in [`Sim::new`]).
fn sp(setpoints: &HashMap<String, f64>, id: &str) -> f64 {
    setpoints.get(id).copied().unwrap_or(0.0)
}

/// Wear rate such that, at rated speed, the bearing fails after `life_h` hours:
/// `dw/dt = k (1 + 3w)` reaches `w = 1` at `t = ln 4 / (3k)`.
fn wear_rate_for_life(life_h: f64) -> f64 {
    4f64.ln() / (3.0 * life_h * 3600.0)
}
