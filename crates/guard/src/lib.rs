//! The guard: the one door between an agent's proposal and the plant.
//!
//! [`Guard::decide`] checks, in order: the agent's identity (registered, not revoked, a
//! valid short-lived token bound to it, a fresh signature by the agent's own key, an unused
//! nonce), the Cedar [`Policy`] (deny unless a policy permits, a forbid overrides every
//! permit, with the process state and the inputs' trust as context), the plant's process state, the
//! setpoint's safety envelope (min, max, max step, changes per hour) and the risk tier.
//! A line stop is automatic only when corroborated by two independent detections on
//! trusted data; otherwise a human decides.
//!
//! The outcome is executed, pending human approval, or denied with a reason. Only this
//! crate can construct an [`Approved`] command, and the actuation stage accepts nothing
//! else. The guard does no I/O, reads no clock and does not know the agents' code.

mod identity;
mod policy;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use detect::Detection;
use plant_model::{Plant, PlantCommand, RiskTier};
use serde::{Deserialize, Serialize};

pub use identity::{
    AgentRegistry, IdentityError, MAX_LIVE_TOKENS, Scope, SignedProposal, Token, TokenRequest,
    sign_proposal, sign_token_request, token_request_message,
};
pub use policy::{
    DEFAULT_POLICY, HUMAN_ACTIONS, Human, KINDS, Policy, PolicyError, Principal, ProcessContext,
    Review, SCHEMA, SITE_POLICY, Verdict,
};

/// Whether every value `p` rests on has the trust actuation requires.
fn inputs_trusted(p: &Proposal, trust: &InputTrust) -> bool {
    !p.inputs.iter().any(|i| trust.below.contains_key(i))
}

/// The process when a person acts: what the policy deciding their review sees.
#[derive(Debug, Clone, Copy)]
pub struct Situation<'a> {
    pub trust: &'a InputTrust,
    pub active: &'a [&'a Detection],
}

/// How long a pending approval waits before it expires, unless configured otherwise.
pub const APPROVAL_TTL_MS: i64 = 60 * 60 * 1000;

/// What an agent asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    SetSetpoint {
        setpoint: String,
        value: f64,
    },
    StopLine,
    Maintenance {
        asset: String,
    },
    /// This line takes what remains of an order queued on (or running on) another line of
    /// the site: the scheduler's rerouting. Decided by the guard of the line that takes it.
    TakeOrder {
        order: String,
        from_line: String,
    },
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::SetSetpoint { .. } => "set_setpoint",
            Action::StopLine => "stop_line",
            Action::Maintenance { .. } => "maintenance",
            Action::TakeOrder { .. } => "take_order",
        }
    }
}

/// A proposal, as the agent signs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proposal {
    pub agent: String,
    pub action: Action,
    /// Why, in words an operator can read.
    pub reason: String,
    /// Ids of the detections the proposal rests on.
    #[serde(default)]
    pub evidence: Vec<u64>,
    /// The signals whose values the agent used to decide.
    #[serde(default)]
    pub inputs: Vec<String>,
    pub created_ms: i64,
    /// Unique per proposal; a repeat is a replay.
    pub nonce: String,
}

/// A command the plant will carry out. Only the guard constructs one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Command {
    pub id: String,
    pub asset: String,
    pub command: PlantCommand,
    /// The agent that proposed it, or the human who ordered it.
    pub origin: String,
    pub approved_by: Vec<String>,
}

/// Proof that the guard approved a command. Its field is private and it has no public
/// constructor, no `Clone` and no `Deserialize`: holding one means the guard said yes.
///
/// Code outside this crate cannot make one:
///
/// ```compile_fail
/// use guard::{Approved, Command};
/// use plant_model::PlantCommand;
/// let forged = Approved(Command {
///     id: "cmd-x".into(),
///     asset: "pump".into(),
///     command: PlantCommand::StopLine,
///     origin: "attacker".into(),
///     approved_by: vec![],
/// });
/// ```
#[derive(Debug)]
pub struct Approved(Command);

impl Approved {
    pub fn command(&self) -> &Command {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    Identity,
    Scope,
    UntrustedInput,
    TokenWithoutKey,
    Replay,
    Policy,
    LineStopped,
    UnknownTarget,
    Envelope,
    RateLimit,
    Budget,
    Precondition,
    Rejected,
    Expired,
    /// The breakers have put agents in advisory mode: proposals are recorded, not run.
    Advisory,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::Identity => "identity",
            DenyReason::Scope => "scope",
            DenyReason::UntrustedInput => "untrusted_input",
            DenyReason::TokenWithoutKey => "token_without_key",
            DenyReason::Replay => "replay",
            DenyReason::Policy => "policy",
            DenyReason::LineStopped => "line_stopped",
            DenyReason::UnknownTarget => "unknown_target",
            DenyReason::Envelope => "envelope",
            DenyReason::RateLimit => "rate_limit",
            DenyReason::Budget => "budget",
            DenyReason::Precondition => "precondition",
            DenyReason::Rejected => "rejected_by_human",
            DenyReason::Expired => "approval_expired",
            DenyReason::Advisory => "advisory_mode",
        }
    }
}

/// A denial on its way to becoming a [`Decision`].
#[derive(Debug)]
struct Denial(DenyReason, String);

impl Denial {
    fn new(reason: DenyReason, detail: impl Into<String>) -> Denial {
        Denial(reason, detail.into())
    }
}

impl From<Denial> for Decision {
    fn from(d: Denial) -> Decision {
        Decision::Denied {
            reason: d.0,
            detail: d.1,
        }
    }
}

#[derive(Debug)]
pub enum Decision {
    Execute(Approved),
    Pending { id: u64, why: String },
    Denied { reason: DenyReason, detail: String },
}

/// What gets audited about a decision.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRecord {
    pub proposal_id: u64,
    pub agent: String,
    pub action: Option<Action>,
    pub outcome: &'static str,
    pub reason: Option<DenyReason>,
    pub detail: String,
    pub rule: Option<String>,
}

impl Decision {
    pub fn record(
        &self,
        proposal_id: u64,
        agent: &str,
        action: Option<&Action>,
        rule: Option<String>,
    ) -> DecisionRecord {
        let (outcome, reason, detail) = match self {
            Decision::Execute(a) => ("executed", None, format!("command {}", a.0.id)),
            Decision::Pending { why, .. } => ("pending", None, why.clone()),
            Decision::Denied { reason, detail } => ("denied", Some(*reason), detail.clone()),
        };
        DecisionRecord {
            proposal_id,
            agent: agent.to_string(),
            action: action.cloned(),
            outcome,
            reason,
            detail,
            rule,
        }
    }
}

/// Signals whose current values are below the trust that actuation requires, with why
/// (an unsigned source, a value contradicted by physics). Signals not listed are trusted.
#[derive(Debug, Clone, Default)]
pub struct InputTrust {
    pub below: HashMap<String, String>,
    /// The current value of each signal, for setpoints' preconditions.
    pub values: HashMap<String, f64>,
}

/// Limits the guard holds per agent, beside each setpoint's envelope from the plant file.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardLimits {
    /// Proposals of one agent accepted (executed or sent to a human) in any sliding hour.
    pub agent_actions_per_hour: u32,
    /// The same, for one agent on one asset.
    pub agent_asset_actions_per_hour: u32,
    /// How long an agent's token lives.
    pub token_ttl_ms: i64,
    /// How long a proposal waits for its approvals before it expires.
    pub approval_ttl_ms: i64,
}

impl Default for GuardLimits {
    fn default() -> Self {
        GuardLimits {
            agent_actions_per_hour: 60,
            agent_asset_actions_per_hour: 20,
            token_ttl_ms: 15 * 60 * 1000,
            approval_ttl_ms: APPROVAL_TTL_MS,
        }
    }
}

const HOUR_MS: i64 = 3_600_000;

/// Limits that trip the agents into advisory mode (they propose; nothing of theirs
/// executes automatically) until an approver resets the breakers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerLimits {
    /// Detections raised in any sliding hour (alarm density).
    pub alarms_per_hour: u32,
    /// Agents' commands executed in any sliding 10 minutes (actuation rate).
    pub actions_per_10_min: u32,
    /// Frames or values refused for integrity (signature, replay, key, device, topic) in
    /// any sliding hour.
    pub integrity_failures_per_hour: u32,
    /// Times the twin's physics disagreed with the plant's measurements in any sliding
    /// hour (model disagreement).
    pub model_disagreements_per_hour: u32,
}

impl Default for BreakerLimits {
    fn default() -> Self {
        BreakerLimits {
            alarms_per_hour: 60,
            actions_per_10_min: 12,
            integrity_failures_per_hour: 30,
            model_disagreements_per_hour: 6,
        }
    }
}

/// Why and since when the agents are in advisory mode.
#[derive(Debug, Clone, Serialize)]
pub struct Tripped {
    pub since_ms: i64,
    pub why: String,
}

/// What the breakers count, each as event times within its window.
#[derive(Debug, Clone, Default)]
struct BreakerState {
    alarms: VecDeque<i64>,
    actions: VecDeque<i64>,
    integrity: VecDeque<i64>,
    disagreements: VecDeque<i64>,
    tripped: Option<Tripped>,
    trips: u64,
    /// Trips and resets not yet taken by the core (for the audit log and the page).
    events: Vec<String>,
}

fn prune(times: &mut VecDeque<i64>, now_ms: i64, window_ms: i64) {
    while times.front().is_some_and(|t| now_ms - t >= window_ms) {
        times.pop_front();
    }
}

/// A proposal waiting for a human.
#[derive(Debug, Clone, Serialize)]
pub struct PendingApproval {
    pub id: u64,
    pub proposal: Proposal,
    pub why: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    /// Distinct humans who must approve (1, or 2 for a dual-approval change).
    pub approvals_needed: usize,
    /// Those who have approved so far.
    pub approved_by: Vec<String>,
}

/// What the guard would decide on a proposal, and why (see [`Guard::assess`]).
#[derive(Debug, Clone, Serialize)]
pub struct Assessment {
    /// The asset the action targets ("line" for a line stop).
    pub asset: Option<String>,
    pub policy: Option<Verdict>,
    /// The envelope, budget, precondition or rate limit the action would break.
    pub limits: Option<String>,
    /// Who decides: automatic, one human approval, two approvals by different humans.
    pub tier: Option<String>,
    /// The outcome in words.
    pub outcome: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GuardStats {
    pub executed: u64,
    pub pending: u64,
    pub denied: BTreeMap<DenyReason, u64>,
    pub executed_by_agent: BTreeMap<String, u64>,
    pub line_stops: u64,
    /// Alerts raised by identity failures (a token presented without its key).
    pub alerts: Vec<String>,
}

/// A proposal whose agent, token, signature, freshness and nonce the guard has checked.
/// Only the guard makes one, so [`Guard::decide_authenticated`] cannot be handed an
/// unchecked proposal.
#[derive(Debug)]
pub struct Authenticated(Proposal);

impl Authenticated {
    pub fn proposal(&self) -> &Proposal {
        &self.0
    }
}

pub struct Guard {
    plant: Arc<Plant>,
    agents: AgentRegistry,
    policy: Policy,
    limits: GuardLimits,
    breaker_limits: BreakerLimits,
    breakers: BreakerState,
    /// Last commanded value per setpoint.
    commanded: HashMap<String, f64>,
    /// Executed changes per setpoint (time, absolute change), in time order, newest last.
    changes: HashMap<String, VecDeque<(i64, f64)>>,
    /// Accepted proposals per agent (time, asset), newest last.
    accepted: HashMap<String, VecDeque<(i64, String)>>,
    line_stopped: bool,
    pending: BTreeMap<u64, PendingApproval>,
    /// The most recently expired approvals (id, expiry), so that a late approver is told.
    expired: VecDeque<(u64, i64)>,
    next_proposal: u64,
    next_command: u64,
    stats: GuardStats,
}

/// Independent corroboration: the largest number of trusted detections whose evidence
/// signals are pairwise disjoint (greedy, in the order given).
pub fn independent_trusted(detections: &[&Detection]) -> usize {
    let mut used: Vec<&str> = Vec::new();
    let mut n = 0;
    for d in detections.iter().filter(|d| d.evidence.trusted) {
        if d.evidence
            .signals
            .iter()
            .any(|s| used.contains(&s.as_str()))
        {
            continue;
        }
        used.extend(d.evidence.signals.iter().map(String::as_str));
        n += 1;
    }
    n
}

impl Guard {
    pub fn new(plant: Arc<Plant>, agents: AgentRegistry, policy: Policy) -> Guard {
        let commanded = plant
            .setpoints
            .iter()
            .map(|s| (s.id.clone(), s.initial))
            .collect();
        Guard {
            plant,
            agents,
            policy,
            limits: GuardLimits::default(),
            breaker_limits: BreakerLimits::default(),
            breakers: BreakerState::default(),
            commanded,
            changes: HashMap::new(),
            accepted: HashMap::new(),
            line_stopped: false,
            pending: BTreeMap::new(),
            expired: VecDeque::new(),
            next_proposal: 1,
            next_command: 1,
            stats: GuardStats::default(),
        }
    }

    /// Puts `policy` in force from now on: new proposals, and the reviews of those still
    /// pending, are decided by it.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The same guard with per-agent limits other than the defaults.
    pub fn with_limits(mut self, limits: GuardLimits) -> Guard {
        self.limits = limits;
        self.agents.token_ttl_ms = limits.token_ttl_ms;
        self
    }

    pub fn limits(&self) -> GuardLimits {
        self.limits
    }

    /// The same guard with other breaker limits.
    pub fn with_breakers(mut self, limits: BreakerLimits) -> Guard {
        self.breaker_limits = limits;
        self
    }

    /// A detection was raised (`model`: the twin's physics disagrees with the plant).
    pub fn note_alarm(&mut self, now_ms: i64, model: bool) {
        self.breakers.alarms.push_back(now_ms);
        if model {
            self.breakers.disagreements.push_back(now_ms);
        }
        self.check_breakers(now_ms);
    }

    /// `n` frames or values were refused for integrity.
    pub fn note_integrity_failures(&mut self, now_ms: i64, n: u64) {
        for _ in 0..n.min(10_000) {
            self.breakers.integrity.push_back(now_ms);
        }
        self.check_breakers(now_ms);
    }

    /// Advisory mode: why and since when, if the breakers have tripped.
    pub fn advisory(&self) -> Option<&Tripped> {
        self.breakers.tripped.as_ref()
    }

    pub fn breaker_trips(&self) -> u64 {
        self.breakers.trips
    }

    /// Trips and resets since the last call, in words (for the audit log).
    pub fn take_breaker_events(&mut self) -> Vec<String> {
        std::mem::take(&mut self.breakers.events)
    }

    /// An approver resets the breakers, if the policy lets them: agents act again, and the
    /// counts start afresh.
    pub fn reset_breakers(
        &mut self,
        human: &Human,
        now: &Situation<'_>,
        now_ms: i64,
    ) -> Result<String, String> {
        if self.breakers.tripped.is_none() {
            return Err("the breakers have not tripped; agents are not in advisory mode".into());
        }
        let review = self.review_of_line(now);
        self.review_allowed(human, "reset_breakers", "line", "the breakers", review)?;
        let Some(t) = self.breakers.tripped.take() else {
            return Err("the breakers have not tripped; agents are not in advisory mode".into());
        };
        let msg = format!(
            "breakers reset by {} at {now_ms}: agents act again (advisory since {}: {})",
            human.name, t.since_ms, t.why
        );
        let trips = self.breakers.trips;
        self.breakers = BreakerState {
            trips,
            ..Default::default()
        };
        self.breakers.events.push(msg.clone());
        Ok(msg)
    }

    fn check_breakers(&mut self, now_ms: i64) {
        let l = self.breaker_limits;
        let b = &mut self.breakers;
        prune(&mut b.alarms, now_ms, HOUR_MS);
        prune(&mut b.actions, now_ms, 10 * 60_000);
        prune(&mut b.integrity, now_ms, HOUR_MS);
        prune(&mut b.disagreements, now_ms, HOUR_MS);
        if b.tripped.is_some() {
            return;
        }
        // (events counted, its limit, what they are) per breaker, in the order checked.
        let counts = [
            (
                b.alarms.len(),
                l.alarms_per_hour,
                "detections in the last hour",
            ),
            (
                b.actions.len(),
                l.actions_per_10_min,
                "agent commands executed in the last 10 minutes",
            ),
            (
                b.integrity.len(),
                l.integrity_failures_per_hour,
                "integrity failures in the last hour",
            ),
            (
                b.disagreements.len(),
                l.model_disagreements_per_hour,
                "times the twin's physics disagreed with the plant in the last hour",
            ),
        ];
        let why = counts
            .iter()
            .find(|(n, limit, _)| *n as u64 > u64::from(*limit))
            .map(|(n, limit, what)| format!("{n} {what} (limit {limit})"));
        if let Some(why) = why {
            b.trips += 1;
            b.events.push(format!(
                "breakers tripped at {now_ms}: {why}; agents are advisory until an approver resets them"
            ));
            b.tripped = Some(Tripped {
                since_ms: now_ms,
                why,
            });
        }
    }

    pub fn agents(&mut self) -> &mut AgentRegistry {
        &mut self.agents
    }

    pub fn stats(&self) -> GuardStats {
        let mut s = self.stats.clone();
        s.pending = self.pending.len() as u64;
        s
    }

    pub fn line_stopped(&self) -> bool {
        self.line_stopped
    }

    pub fn commanded(&self, setpoint: &str) -> Option<f64> {
        self.commanded.get(setpoint).copied()
    }

    pub fn pending(&self) -> impl Iterator<Item = &PendingApproval> {
        self.pending.values()
    }

    /// What the guard would decide on `p` now, without deciding: the policy's verdict,
    /// the envelope and rate checks, and the tier. Changes nothing (for `policy check`).
    pub fn assess(
        &self,
        p: &Proposal,
        context: &ProcessContext,
        values: &HashMap<String, f64>,
        now_ms: i64,
    ) -> Assessment {
        let asset = match self.target_asset(&p.action) {
            Ok(a) => a,
            Err(d) => {
                return Assessment {
                    asset: None,
                    policy: None,
                    limits: Some(format!("{}: {}", d.0.as_str(), d.1)),
                    tier: None,
                    outcome: format!("denied ({}): {}", d.0.as_str(), d.1),
                };
            }
        };
        let verdict =
            self.policy
                .decide(Principal::Agent(&p.agent), p.action.kind(), &asset, context);
        let limits = match &p.action {
            Action::SetSetpoint { setpoint, value } => self
                .check_envelope(setpoint, *value, now_ms, values)
                .err()
                .map(|d| format!("{}: {}", d.0.as_str(), d.1)),
            _ => None,
        };
        let tier = match &p.action {
            Action::SetSetpoint { setpoint, .. } => self
                .plant
                .setpoint(setpoint)
                .map_or(RiskTier::Approve, |s| s.risk),
            Action::Maintenance { .. } => RiskTier::Approve,
            Action::StopLine => RiskTier::Approve,
            Action::TakeOrder { .. } => RiskTier::Auto,
        };
        let tier_words = match (&p.action, tier) {
            (Action::StopLine, _) => {
                "automatic with two independent detections on trusted data, else one human approval"
            }
            (_, RiskTier::Auto) => "automatic",
            (_, RiskTier::Approve) => "one human approval",
            (_, RiskTier::Dual) => "two approvals by different humans",
        };
        let outcome = if !verdict.allowed {
            format!("denied (policy): {}", verdict.explain())
        } else if !context.line_running && p.action != Action::StopLine {
            "denied (line_stopped): nothing automatic runs while the line is stopped".to_string()
        } else if let Some(l) = &limits {
            format!("denied ({l})")
        } else if tier == RiskTier::Auto {
            format!("executed: {}", verdict.explain())
        } else {
            format!("waits for {tier_words}: {}", verdict.explain())
        };
        Assessment {
            asset: Some(asset),
            policy: Some(verdict),
            limits,
            tier: Some(tier_words.to_string()),
            outcome,
        }
    }

    /// Decides on a signed proposal. `active` are the detections currently raised.
    pub fn decide(
        &mut self,
        sp: &SignedProposal,
        active: &[&Detection],
        trust: &InputTrust,
        now_ms: i64,
    ) -> (u64, Decision, DecisionRecord) {
        match self.authenticate(sp, now_ms) {
            Ok(a) => self.decide_authenticated(a, active, trust, now_ms),
            Err(denied) => *denied,
        }
    }

    /// The first half of [`Guard::decide`]: the proposal's token, signature, freshness and
    /// nonce. A failure is already a recorded denial.
    pub fn authenticate(
        &mut self,
        sp: &SignedProposal,
        now_ms: i64,
    ) -> Result<Authenticated, Box<(u64, Decision, DecisionRecord)>> {
        match self.agents.authenticate(sp, now_ms) {
            Ok(p) => Ok(Authenticated(p)),
            Err(e) => {
                let id = self.next_proposal;
                self.next_proposal += 1;
                let reason = match e {
                    IdentityError::TokenWithoutKey { .. } => {
                        self.stats.alerts.push(format!(
                            "token of agent {} presented without its key at {now_ms}",
                            e.agent()
                        ));
                        DenyReason::TokenWithoutKey
                    }
                    IdentityError::Replay { .. } => DenyReason::Replay,
                    _ => DenyReason::Identity,
                };
                let d = Decision::Denied {
                    reason,
                    detail: e.to_string(),
                };
                let rec = d.record(id, e.agent(), None, None);
                self.count(&d, e.agent());
                Err(Box::new((id, d, rec)))
            }
        }
    }

    /// The second half of [`Guard::decide`]: scope, trust of the inputs, policy, rate
    /// limits, envelope, budget, preconditions, corroboration and risk tier.
    pub fn decide_authenticated(
        &mut self,
        authenticated: Authenticated,
        active: &[&Detection],
        trust: &InputTrust,
        now_ms: i64,
    ) -> (u64, Decision, DecisionRecord) {
        let Authenticated(proposal) = authenticated;
        let id = self.next_proposal;
        self.next_proposal += 1;
        // An external agent's tokens reach only the kinds and assets of its scope.
        if let Some(scope) = self.agents.scope(&proposal.agent) {
            let target = self.target_asset(&proposal.action);
            let covered = target
                .as_ref()
                .is_ok_and(|asset| scope.covers(proposal.action.kind(), asset));
            if !covered {
                let d = Self::deny(
                    DenyReason::Scope,
                    format!(
                        "agent {} is registered for {} on {}, not {} on {}",
                        proposal.agent,
                        scope.kinds.join(", "),
                        scope.assets.join(", "),
                        proposal.action.kind(),
                        target.unwrap_or_else(|d| d.1)
                    ),
                );
                let rec = d.record(id, &proposal.agent, Some(&proposal.action), None);
                self.count(&d, &proposal.agent);
                return (id, d, rec);
            }
        }
        let untrusted: Vec<String> = proposal
            .inputs
            .iter()
            .filter_map(|i| trust.below.get(i).map(|why| format!("{i} ({why})")))
            .collect();
        // A stop resting on doubtful data still reaches a human (corroboration needs
        // trusted detections); anything else resting on it is denied.
        let (decision, rule) = if untrusted.is_empty() || proposal.action == Action::StopLine {
            self.evaluate(id, &proposal, active, trust, untrusted.is_empty(), now_ms)
        } else {
            (
                Self::deny(
                    DenyReason::UntrustedInput,
                    format!(
                        "rests on values that may be shown but may not drive actuation: {}",
                        untrusted.join(", ")
                    ),
                ),
                None,
            )
        };
        let rec = decision.record(id, &proposal.agent, Some(&proposal.action), rule);
        self.count(&decision, &proposal.agent);
        if matches!(decision, Decision::Execute(_)) {
            self.breakers.actions.push_back(now_ms);
            self.check_breakers(now_ms);
        }
        (id, decision, rec)
    }

    fn count(&mut self, d: &Decision, agent: &str) {
        match d {
            Decision::Execute(a) => {
                self.stats.executed += 1;
                match self.stats.executed_by_agent.get_mut(agent) {
                    Some(n) => *n += 1,
                    None => {
                        self.stats.executed_by_agent.insert(agent.to_string(), 1);
                    }
                }
                if a.0.command == PlantCommand::StopLine {
                    self.stats.line_stops += 1;
                }
            }
            Decision::Pending { .. } => {}
            Decision::Denied { reason, .. } => *self.stats.denied.entry(*reason).or_default() += 1,
        }
    }

    fn deny(reason: DenyReason, detail: impl Into<String>) -> Decision {
        Decision::Denied {
            reason,
            detail: detail.into(),
        }
    }

    /// The process as the policy sees it now.
    fn process_context(&self, inputs_trusted: bool, active: &[&Detection]) -> ProcessContext {
        let mut kinds: Vec<String> = active.iter().map(|d| d.kind.as_str().to_string()).collect();
        kinds.sort();
        kinds.dedup();
        ProcessContext {
            line_running: !self.line_stopped,
            inputs_trusted,
            anomalies: active.len() as i64,
            anomaly_kinds: kinds,
        }
    }

    /// Policy, state, envelope and tier, for an authenticated proposal.
    fn evaluate(
        &mut self,
        id: u64,
        p: &Proposal,
        active: &[&Detection],
        trust: &InputTrust,
        inputs_trusted: bool,
        now_ms: i64,
    ) -> (Decision, Option<String>) {
        let asset = match self.target_asset(&p.action) {
            Ok(a) => a,
            Err(d) => return (d.into(), None),
        };
        let context = self.process_context(inputs_trusted, active);
        let verdict = self.policy.decide(
            Principal::Agent(&p.agent),
            p.action.kind(),
            &asset,
            &context,
        );
        if !verdict.allowed {
            let mut detail = format!(
                "agent {} may not {} on {asset}: {}",
                p.agent,
                p.action.kind(),
                verdict.explain()
            );
            if !verdict.errors.is_empty() {
                detail.push_str(&format!(" (policy errors: {})", verdict.errors.join("; ")));
            }
            let rule = (!verdict.policies.is_empty()).then(|| verdict.policies.join("; "));
            return (Self::deny(DenyReason::Policy, detail), rule);
        }
        let rule = Some(verdict.policies.join("; "));
        if self.line_stopped && p.action != Action::StopLine {
            return (
                Self::deny(
                    DenyReason::LineStopped,
                    "the line is stopped; nothing automatic runs until a human restarts it",
                ),
                rule,
            );
        }
        if let Err(d) = self.check_agent_rate(&p.agent, &asset, now_ms) {
            return (d.into(), rule);
        }
        let tier = match &p.action {
            Action::SetSetpoint { setpoint, value } => {
                if let Err(d) = self.check_envelope(setpoint, *value, now_ms, &trust.values) {
                    return (d.into(), rule);
                }
                self.plant
                    .setpoint(setpoint)
                    .map_or(RiskTier::Approve, |s| s.risk)
            }
            Action::Maintenance { .. } => RiskTier::Approve,
            // Work moves between lines; no setpoint or equipment state changes.
            Action::TakeOrder { .. } => RiskTier::Auto,
            Action::StopLine => {
                let cited: Vec<&Detection> = active
                    .iter()
                    .copied()
                    .filter(|d| p.evidence.contains(&d.id))
                    .collect();
                if independent_trusted(&cited) >= 2 {
                    RiskTier::Auto
                } else {
                    RiskTier::Approve
                }
            }
        };
        // An episode classified unknown or suspected attack goes to a human, never
        // straight to an action.
        let doubtful = active
            .iter()
            .find(|d| p.evidence.contains(&d.id) && !d.class.actionable())
            .map(|d| (d.id, d.class));
        let tier = if tier == RiskTier::Auto && doubtful.is_some() {
            RiskTier::Approve
        } else {
            tier
        };
        self.check_breakers(now_ms);
        if let Some(t) = &self.breakers.tripped
            && tier == RiskTier::Auto
        {
            if p.action == Action::StopLine {
                // A corroborated stop still reaches a human, never nobody.
                let why = format!("advisory mode ({}): a line stop goes to a human", t.why);
                self.pending.insert(
                    id,
                    PendingApproval {
                        id,
                        proposal: p.clone(),
                        why: why.clone(),
                        created_ms: now_ms,
                        expires_ms: now_ms + self.limits.approval_ttl_ms,
                        approvals_needed: 1,
                        approved_by: vec![],
                    },
                );
                return (Decision::Pending { id, why }, rule);
            }
            return (
                Self::deny(
                    DenyReason::Advisory,
                    format!(
                        "advisory mode since {} ({}): recorded, not executed; an approver resets the breakers",
                        t.since_ms, t.why
                    ),
                ),
                rule,
            );
        }
        self.accepted
            .entry(p.agent.clone())
            .or_default()
            .push_back((now_ms, asset.clone()));
        let decision = match tier {
            RiskTier::Auto => Decision::Execute(self.approve_now(
                p.action.clone(),
                &asset,
                &p.agent,
                vec![],
                now_ms,
            )),
            RiskTier::Approve | RiskTier::Dual => {
                let approvals_needed = if tier == RiskTier::Dual { 2 } else { 1 };
                let who = if approvals_needed == 2 {
                    "two different humans"
                } else {
                    "a human"
                };
                let why = match (&p.action, doubtful) {
                    (_, Some((id, class))) => format!(
                        "it rests on detection {id}, classified {}: {who} decides",
                        class.as_str().replace('_', " ")
                    ),
                    (Action::StopLine, None) => "a line stop without two independent detections on trusted data needs a human".to_string(),
                    (Action::Maintenance { .. }, None) => format!("maintenance needs {who}"),
                    (Action::TakeOrder { order, .. }, None) => format!("taking order {order} needs {who}"),
                    (Action::SetSetpoint { setpoint, .. }, None) => format!("changes to {setpoint} need {who}"),
                };
                self.pending.insert(
                    id,
                    PendingApproval {
                        id,
                        proposal: p.clone(),
                        why: why.clone(),
                        created_ms: now_ms,
                        expires_ms: now_ms + self.limits.approval_ttl_ms,
                        approvals_needed,
                        approved_by: vec![],
                    },
                );
                Decision::Pending { id, why }
            }
        };
        (decision, rule)
    }

    fn target_asset(&self, action: &Action) -> Result<String, Denial> {
        match action {
            Action::SetSetpoint { setpoint, .. } => self
                .plant
                .setpoint(setpoint)
                .map(|s| s.asset.clone())
                .ok_or_else(|| {
                    Denial::new(
                        DenyReason::UnknownTarget,
                        format!("unknown setpoint {setpoint:?}"),
                    )
                }),
            Action::Maintenance { asset } => self
                .plant
                .asset(asset)
                .map(|a| a.id.clone())
                .ok_or_else(|| {
                    Denial::new(
                        DenyReason::UnknownTarget,
                        format!("unknown asset {asset:?}"),
                    )
                }),
            Action::StopLine => Ok("line".to_string()),
            Action::TakeOrder { order, from_line } => {
                let ok = |s: &str| {
                    !s.is_empty()
                        && s.len() <= 64
                        && s.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                };
                if !ok(order) || !ok(from_line) {
                    return Err(Denial::new(
                        DenyReason::UnknownTarget,
                        format!(
                            "order {order:?} from line {from_line:?}: an order and a line are named by 1 to 64 letters, digits, '-', '_' or '.'"
                        ),
                    ));
                }
                if *from_line == self.plant.plant.id {
                    return Err(Denial::new(
                        DenyReason::UnknownTarget,
                        format!("order {order} is already on line {from_line}"),
                    ));
                }
                Ok("line".to_string())
            }
        }
    }

    /// The agent's accepted proposals in the last hour, overall and on `asset`, against
    /// its limits.
    fn check_agent_rate(&mut self, agent: &str, asset: &str, now_ms: i64) -> Result<(), Denial> {
        let Some(recent) = self.accepted.get_mut(agent) else {
            // Nothing accepted yet; a limit of zero still refuses the first.
            return Self::within_rate(agent, asset, 0, 0, self.limits);
        };
        while recent.front().is_some_and(|(t, _)| now_ms - t >= HOUR_MS) {
            recent.pop_front();
        }
        let limits = self.limits;
        // Fewer actions overall than the asset's limit: under it on the asset too, without
        // counting.
        let on_asset = if (recent.len() as u64) < u64::from(limits.agent_asset_actions_per_hour) {
            0
        } else {
            recent.iter().filter(|(_, a)| a == asset).count()
        };
        Self::within_rate(agent, asset, recent.len(), on_asset, limits)
    }

    /// Whether one more action of `agent` on `asset` fits its limits, with `overall` and
    /// `on_asset` accepted in the last hour.
    fn within_rate(
        agent: &str,
        asset: &str,
        overall: usize,
        on_asset: usize,
        limits: GuardLimits,
    ) -> Result<(), Denial> {
        if overall as u64 >= u64::from(limits.agent_actions_per_hour) {
            return Err(Denial::new(
                DenyReason::RateLimit,
                format!(
                    "agent {agent} already had {overall} actions accepted in the last hour (limit {})",
                    limits.agent_actions_per_hour
                ),
            ));
        }
        if on_asset as u64 >= u64::from(limits.agent_asset_actions_per_hour) {
            return Err(Denial::new(
                DenyReason::RateLimit,
                format!(
                    "agent {agent} already had {on_asset} actions on {asset} accepted in the last hour (limit {})",
                    limits.agent_asset_actions_per_hour
                ),
            ));
        }
        Ok(())
    }

    /// The setpoint's envelope from the plant file: range, step, changes per hour, slew
    /// rate, cumulative-change budget and preconditions on the process (`values`).
    fn check_envelope(
        &self,
        setpoint: &str,
        value: f64,
        now_ms: i64,
        values: &HashMap<String, f64>,
    ) -> Result<(), Denial> {
        let Some(sp) = self.plant.setpoint(setpoint) else {
            return Err(Denial::new(
                DenyReason::UnknownTarget,
                format!("unknown setpoint {setpoint:?}"),
            ));
        };
        if !value.is_finite() || value < sp.min || value > sp.max {
            return Err(Denial::new(
                DenyReason::Envelope,
                format!(
                    "{setpoint} = {value} is outside its envelope [{}, {}] {}",
                    sp.min, sp.max, sp.unit
                ),
            ));
        }
        let current = self.commanded.get(setpoint).copied().unwrap_or(sp.initial);
        let step = (value - current).abs();
        if step > sp.max_step + 1e-9 {
            return Err(Denial::new(
                DenyReason::Envelope,
                format!(
                    "{setpoint}: step from {current} to {value} is {step} {}, more than the max step {}",
                    sp.unit, sp.max_step
                ),
            ));
        }
        let history = self.changes.get(setpoint);
        // The history is in time order (`approve_now`), so a window is its newest part:
        // counted by bisection, summed from the newest back, never scanned whole.
        let within = |window_ms: i64| {
            history
                .into_iter()
                .flat_map(|h| h.iter().rev())
                .take_while(move |(t, _)| now_ms - t < window_ms)
        };
        let last_hour = history.map_or(0, |h| {
            h.len() - h.partition_point(|(t, _)| now_ms - t >= HOUR_MS)
        });
        if last_hour as u64 >= u64::from(sp.max_changes_per_hour) {
            return Err(Denial::new(
                DenyReason::RateLimit,
                format!(
                    "{setpoint} already changed {last_hour} times in the last hour (limit {})",
                    sp.max_changes_per_hour
                ),
            ));
        }
        if let (Some(slew), Some((t, _))) = (sp.max_slew_per_min, history.and_then(|h| h.back())) {
            let minutes = (now_ms - t).max(0) as f64 / 60_000.0;
            if step > slew * minutes + 1e-9 {
                return Err(Denial::new(
                    DenyReason::Envelope,
                    format!(
                        "{setpoint}: a change of {step} {} {minutes:.2} min after the previous one exceeds the slew limit of {slew} {} per minute",
                        sp.unit, sp.unit
                    ),
                ));
            }
        }
        if let Some(b) = &sp.budget {
            let window_ms = (b.window_min * 60_000.0) as i64;
            let used: f64 = within(window_ms).map(|(_, d)| d).sum();
            if used + step > b.max_total + 1e-9 {
                return Err(Denial::new(
                    DenyReason::Budget,
                    format!(
                        "{setpoint}: {used} {} of change in the last {} min plus this {step} exceeds the budget of {}",
                        sp.unit, b.window_min, b.max_total
                    ),
                ));
            }
        }
        for c in &sp.preconditions {
            let Some(v) = values.get(&c.signal).copied() else {
                return Err(Denial::new(
                    DenyReason::Precondition,
                    format!(
                        "{setpoint} may change only with a current value of {}, and there is none",
                        c.signal
                    ),
                ));
            };
            let low = c.min.is_some_and(|m| v < m);
            let high = c.max.is_some_and(|m| v > m);
            if low || high {
                return Err(Denial::new(
                    DenyReason::Precondition,
                    format!(
                        "{setpoint} may change only while {} is within [{}, {}]; it is {v}",
                        c.signal,
                        c.min.map_or("-inf".to_string(), |m| m.to_string()),
                        c.max.map_or("inf".to_string(), |m| m.to_string()),
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The only place an [`Approved`] is made. Updates the guard's view of the plant.
    fn approve_now(
        &mut self,
        action: Action,
        asset: &str,
        origin: &str,
        approved_by: Vec<String>,
        now_ms: i64,
    ) -> Approved {
        let command = match action {
            Action::SetSetpoint { setpoint, value } => {
                let previous = self.commanded.insert(setpoint.clone(), value);
                let initial = self.plant.setpoint(&setpoint).map_or(value, |s| s.initial);
                let changes = self.changes.entry(setpoint.clone()).or_default();
                // Kept in time order: a clock stepped back files the change at the newest
                // time already held, which keeps it in its windows longer, never shorter.
                let at = changes.back().map_or(now_ms, |(t, _)| now_ms.max(*t));
                changes.push_back((at, (value - previous.unwrap_or(initial)).abs()));
                // Keep what the longest window can still need.
                let keep_ms = self
                    .plant
                    .setpoint(&setpoint)
                    .and_then(|s| s.budget)
                    .map_or(HOUR_MS, |b| ((b.window_min * 60_000.0) as i64).max(HOUR_MS));
                while changes.len() > 1
                    && changes.front().is_some_and(|(t, _)| now_ms - t >= keep_ms)
                {
                    changes.pop_front();
                }
                PlantCommand::SetSetpoint { setpoint, value }
            }
            Action::StopLine => {
                self.line_stopped = true;
                PlantCommand::StopLine
            }
            Action::Maintenance { .. } => PlantCommand::Maintenance,
            Action::TakeOrder { order, from_line } => PlantCommand::TakeOrder { order, from_line },
        };
        let id = format!("cmd-{}", self.next_command);
        self.next_command += 1;
        Approved(Command {
            id,
            asset: asset.to_string(),
            command,
            origin: origin.to_string(),
            approved_by,
        })
    }

    /// A human approves a pending proposal. A dual-approval change executes on the second
    /// approval by a different human; the same human approving twice is refused and the
    /// proposal stays pending. The envelope is checked again on execution: the plant may
    /// have moved on since the proposal was made.
    ///
    /// The policy decides first whether this person may approve this proposal (Cedar
    /// action `approve`); a refusal leaves it pending for someone who may.
    pub fn approve(
        &mut self,
        id: u64,
        who: &Human,
        now: &Situation<'_>,
        now_ms: i64,
    ) -> Result<Decision, String> {
        let trust = now.trust;
        let Some(mut p) = self.pending.remove(&id) else {
            return Err(self.not_pending(id));
        };
        if let Err(why) = self.may_review(who, "approve", &p, now) {
            self.pending.insert(id, p);
            return Err(why);
        }
        let human = who.name.as_str();
        let agent = p.proposal.agent.clone();
        if now_ms <= p.expires_ms && p.approved_by.iter().any(|h| h == human) {
            let msg = format!(
                "{human} has already approved {id}; it needs another approver, a different person"
            );
            self.pending.insert(id, p);
            return Err(msg);
        }
        let decision = if now_ms > p.expires_ms {
            Self::deny(
                DenyReason::Expired,
                format!("approval {id} expired at {}", p.expires_ms),
            )
        } else if p.approved_by.len() + 1 < p.approvals_needed {
            p.approved_by.push(human.to_string());
            let why = format!(
                "approved by {}; needs {} more approver(s), each a different person",
                p.approved_by.join(", "),
                p.approvals_needed - p.approved_by.len()
            );
            p.why = why.clone();
            self.pending.insert(id, p);
            return Ok(Decision::Pending { id, why });
        } else if self.line_stopped && p.proposal.action != Action::StopLine {
            Self::deny(DenyReason::LineStopped, "the line is stopped")
        } else {
            let asset = match self.target_asset(&p.proposal.action) {
                Ok(a) => a,
                Err(d) => return Ok(d.into()),
            };
            // The policy may have changed since the proposal was made: the one in force
            // must still permit it.
            let kind = p.proposal.action.kind();
            let context = self.process_context(inputs_trusted(&p.proposal, trust), now.active);
            let verdict = self
                .policy
                .decide(Principal::Agent(&agent), kind, &asset, &context);
            let check = if !verdict.allowed {
                let mut detail = format!(
                    "agent {agent} may no longer {kind} on {asset}: {}",
                    verdict.explain()
                );
                if !verdict.errors.is_empty() {
                    detail.push_str(&format!(" ({})", verdict.errors.join("; ")));
                }
                Err(Denial::new(DenyReason::Policy, detail))
            } else {
                Ok(())
            };
            let check = check.and_then(|()| match &p.proposal.action {
                Action::SetSetpoint { setpoint, value } => {
                    self.check_envelope(setpoint, *value, now_ms, &trust.values)
                }
                _ => Ok(()),
            });
            match check {
                Err(d) => d.into(),
                Ok(()) => {
                    let mut approved_by = std::mem::take(&mut p.approved_by);
                    approved_by.push(human.to_string());
                    Decision::Execute(self.approve_now(
                        p.proposal.action.clone(),
                        &asset,
                        &agent,
                        approved_by,
                        now_ms,
                    ))
                }
            }
        };
        self.count(&decision, &agent);
        Ok(decision)
    }

    /// A human rejects a pending proposal, if the policy lets them (Cedar action `reject`).
    pub fn reject(
        &mut self,
        id: u64,
        who: &Human,
        now: &Situation<'_>,
    ) -> Result<Decision, String> {
        let p = self
            .pending
            .remove(&id)
            .ok_or_else(|| self.not_pending(id))?;
        if let Err(why) = self.may_review(who, "reject", &p, now) {
            self.pending.insert(id, p);
            return Err(why);
        }
        let d = Self::deny(DenyReason::Rejected, format!("rejected by {}", who.name));
        self.count(&d, &p.proposal.agent);
        Ok(d)
    }

    /// Expires pending approvals past their time; returns their ids.
    pub fn expire(&mut self, now_ms: i64) -> Vec<u64> {
        let expired: Vec<u64> = self
            .pending
            .values()
            .filter(|p| now_ms > p.expires_ms)
            .map(|p| p.id)
            .collect();
        for id in &expired {
            if let Some(p) = self.pending.remove(id) {
                *self.stats.denied.entry(DenyReason::Expired).or_default() += 1;
                self.expired.push_back((*id, p.expires_ms));
                if self.expired.len() > 256 {
                    self.expired.pop_front();
                }
            }
        }
        expired
    }

    /// Whether `who` may `action` ("approve" or "reject") the pending proposal `p`.
    fn may_review(
        &self,
        who: &Human,
        action: &str,
        p: &PendingApproval,
        now: &Situation<'_>,
    ) -> Result<(), String> {
        let asset = self
            .target_asset(&p.proposal.action)
            .unwrap_or_else(|_| "line".to_string());
        let what = format!(
            "proposal {} ({} on {asset}, by agent {})",
            p.id,
            p.proposal.action.kind(),
            p.proposal.agent
        );
        let review = Review {
            kind: p.proposal.action.kind().to_string(),
            agent: p.proposal.agent.clone(),
            dual: p.approvals_needed > 1,
            process: self.process_context(inputs_trusted(&p.proposal, now.trust), now.active),
        };
        self.review_allowed(who, action, &asset, &what, review)
    }

    /// A review of the line as a whole (resume, reset_breakers): its inputs are trusted
    /// when every value is.
    fn review_of_line(&self, now: &Situation<'_>) -> Review {
        Review {
            process: self.process_context(now.trust.below.is_empty(), now.active),
            ..Review::default()
        }
    }

    /// The policy's answer to a person's `action` on `asset`; a refusal in words that name
    /// the person, what they tried and the policies that decided.
    fn review_allowed(
        &self,
        who: &Human,
        action: &str,
        asset: &str,
        what: &str,
        review: Review,
    ) -> Result<(), String> {
        let v = self.policy.decide_review(who, action, asset, &review);
        if v.allowed {
            return Ok(());
        }
        let verb = action.replace('_', " ");
        let mut msg = format!("{} may not {verb} {what}: {}", who.name, v.explain());
        if !v.errors.is_empty() {
            msg.push_str(&format!(" (policy errors: {})", v.errors.join("; ")));
        }
        Err(msg)
    }

    /// Why `id` cannot be approved or rejected: it expired, or it was never pending.
    fn not_pending(&self, id: u64) -> String {
        match self.expired.iter().find(|(e, _)| *e == id) {
            Some((_, at)) => format!("approval {id} expired at {at}; nothing was executed"),
            None => format!("no pending approval {id}"),
        }
    }

    /// The stop button: a human drives the line to its safe state. Always allowed.
    pub fn human_stop(&mut self, human: &str, now_ms: i64) -> Approved {
        let a = self.approve_now(
            Action::StopLine,
            "line",
            human,
            vec![human.to_string()],
            now_ms,
        );
        self.stats.line_stops += 1;
        a
    }

    /// A human restarts a stopped line, if the policy lets them (Cedar action `resume`).
    pub fn human_start(&mut self, who: &Human, now: &Situation<'_>) -> Result<Approved, String> {
        if !self.line_stopped {
            return Err("the line is not stopped".to_string());
        }
        let review = self.review_of_line(now);
        self.review_allowed(who, "resume", "line", "the line", review)?;
        let human = who.name.as_str();
        self.line_stopped = false;
        let id = format!("cmd-{}", self.next_command);
        self.next_command += 1;
        Ok(Approved(Command {
            id,
            asset: "line".into(),
            command: PlantCommand::StartLine,
            origin: human.to_string(),
            approved_by: vec![human.to_string()],
        }))
    }
}
