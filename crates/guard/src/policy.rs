//! The declarative policy, in Cedar: which principal (agent or human) may do which kind of
//! action on which asset, given the process state. Deny unless a policy permits; a forbid
//! overrides every permit. Policies are validated against [`SCHEMA`] when loaded, and each
//! decision names the policies that determined it with their `@reason` text.

use std::collections::BTreeMap;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, EntityUid, PolicyId, PolicySet,
    Request, Schema, ValidationMode, Validator,
};
use plant_model::Plant;
use serde::Serialize;
use serde_json::json;

/// The policy shipped with twinguard for the reference plant.
pub const DEFAULT_POLICY: &str = include_str!("../policy/default.cedar");
/// What a site of several lines adds to [`DEFAULT_POLICY`]: the scheduler's rights.
pub const SITE_POLICY: &str = include_str!("../policy/site.cedar");
/// The schema every policy is validated against.
pub const SCHEMA: &str = include_str!("../policy/schema.cedarschema");

/// The action kinds an agent can propose.
pub const KINDS: [&str; 4] = ["set_setpoint", "stop_line", "maintenance", "take_order"];

/// A loaded, validated policy set with the entities it is evaluated against.
///
/// Cedar evaluates every policy of a set. So that decisions do not slow down with the
/// number of agents, the set is also split by principal: a policy scoped to one principal
/// (`principal == X`) can only apply to X, so X's requests are evaluated against the
/// policies not scoped to one principal plus X's own, with exactly the same outcome.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The policies not scoped to a single principal.
    general: PolicySet,
    /// Principal -> the general policies plus that principal's own.
    by_principal: std::collections::HashMap<EntityUid, PolicySet>,
    schema: Schema,
    entities: Entities,
    /// Policy id → its `@reason`, for decision records.
    reasons: BTreeMap<String, String>,
    source_name: String,
    /// Why there is no policy in force (the file cannot be read or does not validate):
    /// every request is denied with this reason.
    unavailable: Option<String>,
    /// The entity types requests are made of, parsed once.
    types: Types,
    /// The agents' verdicts in the latest process state (see [`VerdictCache`]).
    cache: VerdictCache,
}

/// The schema's entity types that requests name, parsed once rather than at every
/// decision (parsing a type name was about a seventh of a decision).
#[derive(Debug, Clone)]
struct Types {
    agent: cedar_policy::EntityTypeName,
    human: cedar_policy::EntityTypeName,
    action: cedar_policy::EntityTypeName,
    asset: cedar_policy::EntityTypeName,
}

impl Types {
    fn new() -> Result<Types, String> {
        Ok(Types {
            agent: type_name("Agent")?,
            human: type_name("Human")?,
            action: type_name("Action")?,
            asset: type_name("Asset")?,
        })
    }
}

/// The most verdicts the cache holds; past that it starts again empty.
const CACHED_VERDICTS: usize = 65_536;

/// Agents' verdicts in one process state, with that state's Cedar context.
///
/// An agent's verdict is a function of the policy set, the entities (the plant's zone and
/// assets, fixed when the policy is loaded; agents have no attributes or parents), the
/// request (agent, action kind, asset) and the context (the [`ProcessContext`]): Cedar
/// has no clock and nothing else to read. So while the process state stays the same, an
/// agent asking again for the same kind of action on the same asset gets the verdict Cedar
/// gave it the first time, and evaluation (about two fifths of a decision) is spared. A
/// different process state empties the cache; a reloaded policy is a new [`Policy`], and
/// a clone starts empty. People's reviews are never cached: they carry the person's roles
/// and the reviewed proposal.
///
/// Behind a lock so that deciding stays `&self`; never contended (one guard decides at a
/// time), and a poisoned lock only means Cedar evaluates afresh.
#[derive(Debug, Default)]
struct VerdictCache(std::sync::Mutex<Option<Cached>>);

#[derive(Debug)]
struct Cached {
    process: ProcessContext,
    context: Context,
    /// Agent -> (action kind, asset, verdict).
    verdicts: std::collections::HashMap<String, Vec<(String, String, Verdict)>>,
    len: usize,
}

impl Cached {
    fn new(process: ProcessContext, context: Context) -> Cached {
        Cached {
            process,
            context,
            verdicts: std::collections::HashMap::new(),
            len: 0,
        }
    }

    fn get(&self, agent: &str, kind: &str, asset: &str) -> Option<&Verdict> {
        self.verdicts
            .get(agent)?
            .iter()
            .find(|(k, a, _)| k == kind && a == asset)
            .map(|(_, _, verdict)| verdict)
    }

    fn put(&mut self, agent: &str, kind: &str, asset: &str, verdict: Verdict) {
        if self.len >= CACHED_VERDICTS {
            self.verdicts.clear();
            self.len = 0;
        }
        self.verdicts.entry(agent.to_string()).or_default().push((
            kind.to_string(),
            asset.to_string(),
            verdict,
        ));
        self.len += 1;
    }
}

impl Clone for VerdictCache {
    fn clone(&self) -> VerdictCache {
        VerdictCache::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {source_name}:{line}:{column}: {message}")]
    At {
        source_name: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("policy {source_name}: {message}")]
    Invalid {
        source_name: String,
        message: String,
    },
}

impl PolicyError {
    /// An error at byte `offset` of `text`, located by line and column.
    fn at(text: &str, source_name: &str, offset: usize, message: String) -> PolicyError {
        let (line, column) = line_col(text, offset);
        PolicyError::At {
            source_name: source_name.to_string(),
            line,
            column,
            message,
        }
    }
}

/// What the process looks like when a proposal is decided (the Cedar context).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProcessContext {
    pub line_running: bool,
    pub inputs_trusted: bool,
    pub anomalies: i64,
    pub anomaly_kinds: Vec<String>,
}

/// A person as the policy sees them: their name and every role they hold (an admin holds
/// "viewer", "operator", "approver" and "admin"), for `principal.roles`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Human {
    pub name: String,
    pub roles: Vec<String>,
}

impl Human {
    pub fn new(name: &str, roles: &[&str]) -> Human {
        Human {
            name: name.to_string(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }
}

/// What a person's decision (approve, reject, resume, reset_breakers) is made on: the
/// Cedar context of those actions.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Review {
    /// The reviewed proposal's action kind; empty for resume and reset_breakers.
    pub kind: String,
    /// The agent that proposed it; empty for resume and reset_breakers.
    pub agent: String,
    /// The proposal needs two approvers, each a different person.
    pub dual: bool,
    /// The process now; `inputs_trusted` is about the proposal's inputs for approve and
    /// reject, about every value for resume and reset_breakers.
    pub process: ProcessContext,
}

/// What a person may do, as Cedar actions: the [`Review`] is their context.
pub const HUMAN_ACTIONS: [&str; 4] = ["approve", "reject", "resume", "reset_breakers"];

/// A principal a policy names.
#[derive(Debug, Clone, Copy)]
pub enum Principal<'a> {
    Agent(&'a str),
    Human(&'a Human),
}

/// The policy's answer, with the policies that determined it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub allowed: bool,
    /// "id: reason" of each determining policy (the permits that allowed, or the forbids
    /// that denied); empty when nothing permits.
    pub policies: Vec<String>,
    /// Evaluation errors (a policy that failed to evaluate is skipped by Cedar; it is
    /// reported here and the request is denied if nothing else permits it).
    pub errors: Vec<String>,
}

impl Verdict {
    /// The verdict in words, for a denial's detail or a decision record.
    pub fn explain(&self) -> String {
        if self.policies.is_empty() {
            "no policy permits it".to_string()
        } else if self.allowed {
            format!("permitted by {}", self.policies.join("; "))
        } else {
            format!("forbidden by {}", self.policies.join("; "))
        }
    }
}

/// Line and column (1-based) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |n| before.len() - n - 1)
        + 1;
    (line, column)
}

/// How deeply brackets may nest in a policy file, and how many conditionals one policy
/// may hold. Cedar's parser recurses over nesting (and over long operator chains), so a
/// hostile or broken file could exhaust the stack; no real policy comes near these.
pub const MAX_NESTING: usize = 32;
pub const MAX_CONDITIONALS: usize = 32;
/// Tokens in one policy (a policy ends at its `;`).
pub const MAX_POLICY_TOKENS: usize = 4_096;
/// Bytes in a policy file.
pub const MAX_POLICY_BYTES: usize = 16 << 20;

/// Refuses, with its location, a policy text whose shape could exhaust Cedar's parser:
/// too large, brackets nested too deeply, too many conditionals or tokens in one policy.
/// Strings and comments are skipped.
fn check_shape(text: &str, source_name: &str) -> Result<(), PolicyError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(PolicyError::Invalid {
            source_name: source_name.to_string(),
            message: format!(
                "the file has {} bytes, more than the {MAX_POLICY_BYTES} a policy file may have",
                text.len()
            ),
        });
    }
    let at = |offset: usize, message: String| PolicyError::at(text, source_name, offset, message);
    let bytes = text.as_bytes();
    let (mut depth, mut conditionals, mut tokens) = (0usize, 0usize, 0usize);
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let start = i;
        i += 1;
        match b {
            b'"' => {
                // A string: up to the closing quote, escapes skipped.
                while let Some(&c) = bytes.get(i) {
                    i += if c == b'\\' { 2 } else { 1 };
                    if c == b'"' {
                        break;
                    }
                }
            }
            b'/' if bytes.get(i) == Some(&b'/') => {
                while bytes.get(i).is_some_and(|&c| c != b'\n') {
                    i += 1;
                }
                continue;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(at(
                        start,
                        format!("brackets nest more than {MAX_NESTING} deep here"),
                    ));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b';' if depth == 0 => {
                (conditionals, tokens) = (0, 0);
                continue;
            }
            c if c.is_ascii_whitespace() => continue,
            c if c.is_ascii_alphanumeric() || c == b'_' => {
                while bytes
                    .get(i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
                {
                    i += 1;
                }
                if bytes.get(start..i) == Some(b"if") {
                    conditionals += 1;
                    if conditionals > MAX_CONDITIONALS {
                        return Err(at(
                            start,
                            format!("one policy holds more than {MAX_CONDITIONALS} if-expressions"),
                        ));
                    }
                }
            }
            _ => {}
        }
        tokens += 1;
        if tokens > MAX_POLICY_TOKENS {
            return Err(at(
                start,
                format!("one policy runs to more than {MAX_POLICY_TOKENS} tokens by here"),
            ));
        }
    }
    Ok(())
}

/// An error with the location of its first labelled span, when it has one.
fn located(
    source_name: &str,
    text: &str,
    e: &(dyn miette::Diagnostic + Send + Sync),
) -> PolicyError {
    let mut message = e.to_string();
    if let Some(help) = e.help() {
        message = format!("{message} ({help})");
    }
    match e.labels().and_then(|mut l| l.next()) {
        Some(label) => {
            let (line, column) = line_col(text, label.offset());
            PolicyError::At {
                source_name: source_name.to_string(),
                line,
                column,
                message,
            }
        }
        None => PolicyError::Invalid {
            source_name: source_name.to_string(),
            message,
        },
    }
}

fn type_name(kind: &str) -> Result<cedar_policy::EntityTypeName, String> {
    cedar_policy::EntityTypeName::from_str(&format!("Twinguard::{kind}"))
        .map_err(|e| format!("Twinguard::{kind}: {e}"))
}

fn uid_of(type_name: &cedar_policy::EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_name.clone(), cedar_policy::EntityId::new(id))
}

impl Policy {
    /// Parses and validates a policy file against the schema, for `plant` (its assets are
    /// the resources, all in the plant's zone). Every policy needs an `@id`.
    pub fn parse(text: &str, source_name: &str, plant: &Plant) -> Result<Policy, PolicyError> {
        let invalid = |message: String| PolicyError::Invalid {
            source_name: source_name.to_string(),
            message,
        };
        let (schema, _warnings) = Schema::from_cedarschema_str(SCHEMA)
            .map_err(|e| invalid(format!("the built-in schema does not parse: {e}")))?;
        check_shape(text, source_name)?;
        let parsed = PolicySet::from_str(text).map_err(|e| located(source_name, text, &e))?;
        // Stable ids from the `@id` annotations, for decision records.
        let mut set = PolicySet::new();
        let mut reasons = BTreeMap::new();
        for p in parsed.policies() {
            // Where the policy starts: its `@id` annotation (the last one seen, for a
            // duplicate), else its own text.
            let start = match p.annotation("id") {
                Some(id) => text.rfind(&format!("@id({})", json!(id))),
                None => text.find(p.to_string().trim()),
            };
            let at = |message: String| match start {
                Some(offset) => PolicyError::at(text, source_name, offset, message),
                None => invalid(message),
            };
            let Some(id) = p.annotation("id") else {
                return Err(at("the policy has no @id(\"...\") annotation".into()));
            };
            let reason = p.annotation("reason").unwrap_or(id).to_string();
            if reasons.insert(id.to_string(), reason).is_some() {
                return Err(at(format!("@id({id:?}) is used twice")));
            }
            set.add(p.new_id(PolicyId::new(id)))
                .map_err(|e| at(e.to_string()))?;
        }
        if parsed.templates().next().is_some() {
            return Err(invalid("policy templates are not supported".into()));
        }
        let validation = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
        if let Some(e) = validation.validation_errors().next() {
            return Err(located(source_name, text, e));
        }
        let entities = Self::entities(plant, &schema).map_err(invalid)?;
        let (general, by_principal) = Self::index(&set).map_err(invalid)?;
        let types = Types::new().map_err(invalid)?;
        Ok(Policy {
            general,
            by_principal,
            schema,
            entities,
            reasons,
            source_name: source_name.to_string(),
            unavailable: None,
            types,
            cache: VerdictCache::default(),
        })
    }

    /// No policy in force, because of `why`: every request is denied, saying so.
    pub fn unavailable(source_name: &str, why: &str, plant: &Plant) -> Result<Policy, PolicyError> {
        let mut p = Policy::parse("", source_name, plant)?;
        p.unavailable = Some(format!("the policy store is unavailable: {why}"));
        Ok(p)
    }

    /// Why no policy is in force, if none is.
    pub fn unavailable_reason(&self) -> Option<&str> {
        self.unavailable.as_deref()
    }

    /// Splits `set` by principal (see [`Policy`]).
    #[allow(
        clippy::type_complexity,
        reason = "a pair of the general set and the per-principal sets"
    )]
    fn index(
        set: &PolicySet,
    ) -> Result<(PolicySet, std::collections::HashMap<EntityUid, PolicySet>), String> {
        use cedar_policy::PrincipalConstraint;
        let mut general = PolicySet::new();
        let mut own: std::collections::HashMap<EntityUid, Vec<cedar_policy::Policy>> =
            std::collections::HashMap::new();
        for p in set.policies() {
            match p.principal_constraint() {
                PrincipalConstraint::Eq(uid) => own.entry(uid).or_default().push(p.clone()),
                _ => general.add(p.clone()).map_err(|e| e.to_string())?,
            }
        }
        let mut by_principal = std::collections::HashMap::new();
        for (uid, policies) in own {
            let mut s = general.clone();
            for p in policies {
                s.add(p).map_err(|e| e.to_string())?;
            }
            by_principal.insert(uid, s);
        }
        Ok((general, by_principal))
    }

    /// The entities: the plant's zone, its assets and the line in it. People are added
    /// per decision ([`Policy::with_human`]), as the API authenticated them.
    fn entities(plant: &Plant, schema: &Schema) -> Result<Entities, String> {
        let zone = json!({ "type": "Twinguard::Zone", "id": plant.plant.id });
        let mut list = vec![json!({ "uid": zone, "attrs": {}, "parents": [] })];
        for a in plant.assets.iter().map(|a| a.id.as_str()).chain(["line"]) {
            list.push(json!({
                "uid": { "type": "Twinguard::Asset", "id": a },
                "attrs": {},
                "parents": [zone],
            }));
        }
        Entities::from_json_value(serde_json::Value::Array(list), Some(schema))
            .map_err(|e| format!("entities: {e}"))
    }

    /// The entities with `human` among them, with their roles.
    fn with_human(&self, human: &Human) -> Result<Entities, String> {
        let entity = json!([{
            "uid": { "type": "Twinguard::Human", "id": human.name },
            "attrs": { "roles": human.roles },
            "parents": [],
        }]);
        let added = Entities::from_json_value(entity, Some(&self.schema))
            .map_err(|e| format!("person {}: {e}", human.name))?;
        self.entities
            .clone()
            .add_entities(added, Some(&self.schema))
            .map_err(|e| format!("person {}: {e}", human.name))
    }

    /// Whether `principal` may do `kind` on `asset` ("line" for the whole line) in
    /// `context`. Anything that goes wrong while deciding is a denial that says so.
    pub fn decide(
        &self,
        principal: Principal<'_>,
        kind: &str,
        asset: &str,
        context: &ProcessContext,
    ) -> Verdict {
        let fresh = || {
            Context::from_pairs(Self::process_pairs(context)).map_err(|e| format!("context: {e}"))
        };
        let (Principal::Agent(agent), Ok(mut slot)) = (principal, self.cache.0.lock()) else {
            return self.evaluate(principal, kind, asset, fresh());
        };
        // The cache holds this process state's verdicts, or starts again for it.
        let cached = match slot.take() {
            Some(c) if c.process == *context => c,
            _ => match fresh() {
                Ok(cedar) => Cached::new(context.clone(), cedar),
                Err(e) => return self.evaluate(principal, kind, asset, Err(e)),
            },
        };
        let cached = slot.insert(cached);
        if let Some(verdict) = cached.get(agent, kind, asset) {
            return verdict.clone();
        }
        let verdict = self.evaluate(principal, kind, asset, Ok(cached.context.clone()));
        cached.put(agent, kind, asset, verdict.clone());
        verdict
    }

    fn process_pairs(
        context: &ProcessContext,
    ) -> Vec<(String, cedar_policy::RestrictedExpression)> {
        use cedar_policy::RestrictedExpression as X;
        vec![
            (
                "line_running".to_string(),
                X::new_bool(context.line_running),
            ),
            (
                "inputs_trusted".to_string(),
                X::new_bool(context.inputs_trusted),
            ),
            ("anomalies".to_string(), X::new_long(context.anomalies)),
            (
                "anomaly_kinds".to_string(),
                X::new_set(context.anomaly_kinds.iter().cloned().map(X::new_string)),
            ),
        ]
    }

    /// Whether `human` may do `action` (one of [`HUMAN_ACTIONS`]) on `asset` ("line" for
    /// resume and reset_breakers), as `review` describes it.
    pub fn decide_review(
        &self,
        human: &Human,
        action: &str,
        asset: &str,
        review: &Review,
    ) -> Verdict {
        use cedar_policy::RestrictedExpression as X;
        let mut pairs = Self::process_pairs(&review.process);
        pairs.extend([
            ("kind".to_string(), X::new_string(review.kind.clone())),
            ("agent".to_string(), X::new_string(review.agent.clone())),
            ("dual".to_string(), X::new_bool(review.dual)),
        ]);
        let context = Context::from_pairs(pairs).map_err(|e| format!("context: {e}"));
        self.evaluate(Principal::Human(human), action, asset, context)
    }

    fn evaluate(
        &self,
        principal: Principal<'_>,
        action: &str,
        asset: &str,
        context: Result<Context, String>,
    ) -> Verdict {
        let deny = |e: String| Verdict {
            allowed: false,
            policies: vec![],
            errors: vec![e],
        };
        if let Some(why) = &self.unavailable {
            return deny(why.clone());
        }
        // An agent's request is checked against the schema by a test instead of at every
        // decision (2 µs of the guard's 7): the guard builds it from fixed parts (an
        // Agent, one of KINDS, an Asset, `process_pairs`), and the policies it meets were
        // validated strictly when loaded. A person's review is rare and checked here.
        let checked = matches!(principal, Principal::Human(_));
        let (principal, entities) = match principal {
            Principal::Agent(a) => (uid_of(&self.types.agent, a), None),
            Principal::Human(h) => match self.with_human(h) {
                Ok(e) => (uid_of(&self.types.human, &h.name), Some(e)),
                Err(e) => return deny(e),
            },
        };
        let action = uid_of(&self.types.action, action);
        let resource = uid_of(&self.types.asset, asset);
        let context = match context {
            Ok(c) => c,
            Err(e) => return deny(e),
        };
        let schema = checked.then_some(&self.schema);
        let request = match Request::new(principal, action, resource, context, schema) {
            Ok(r) => r,
            Err(e) => return deny(format!("request: {e}")),
        };
        let set = request
            .principal()
            .and_then(|p| self.by_principal.get(p))
            .unwrap_or(&self.general);
        let entities = entities.as_ref().unwrap_or(&self.entities);
        let response = Authorizer::new().is_authorized(&request, set, entities);
        let diagnostics = response.diagnostics();
        let policies = diagnostics
            .reason()
            .map(|id| {
                let id = id.to_string();
                match self.reasons.get(&id) {
                    Some(r) => format!("{id}: {r}"),
                    None => id,
                }
            })
            .collect();
        Verdict {
            allowed: response.decision() == CedarDecision::Allow,
            policies,
            errors: diagnostics.errors().map(ToString::to_string).collect(),
        }
    }

    /// Where the policy was read from.
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// The ids of the loaded policies, with their reasons.
    pub fn policies(&self) -> &BTreeMap<String, String> {
        &self.reasons
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    fn ctx(inputs_trusted: bool) -> ProcessContext {
        ProcessContext {
            line_running: true,
            inputs_trusted,
            anomalies: 0,
            anomaly_kinds: vec![],
        }
    }

    /// `evaluate` skips the schema check of an agent's request because every request the
    /// guard can build for an agent is valid: this is that check, over every kind, every
    /// asset and contexts with and without anomalies.
    #[test]
    fn every_agent_request_the_guard_builds_is_valid_against_the_schema() {
        let plant = Plant::reference();
        let p = Policy::parse(DEFAULT_POLICY, "default", &plant).unwrap();
        let mut busy = ctx(false);
        busy.anomalies = 2;
        busy.anomaly_kinds = vec!["sensor_fault".into(), "attack".into()];
        let assets = plant.assets.iter().map(|a| a.id.as_str()).chain(["line"]);
        for asset in assets {
            for kind in KINDS {
                for context in [ctx(true), busy.clone()] {
                    let request = Request::new(
                        uid_of(&p.types.agent, "optimiser"),
                        uid_of(&p.types.action, kind),
                        uid_of(&p.types.asset, asset),
                        Context::from_pairs(Policy::process_pairs(&context)).unwrap(),
                        Some(&p.schema),
                    );
                    assert!(request.is_ok(), "{kind} on {asset}: {:?}", request.err());
                }
            }
        }
        // And the check would catch a request outside the schema.
        let wrong = Request::new(
            uid_of(&p.types.agent, "optimiser"),
            uid_of(&p.types.action, "set_setpoint"),
            uid_of(&p.types.asset, "past"),
            Context::from_pairs([(
                "line_running".to_string(),
                cedar_policy::RestrictedExpression::new_long(1),
            )])
            .unwrap(),
            Some(&p.schema),
        );
        assert!(wrong.is_err());
    }

    #[test]
    fn the_default_policy_permits_names_and_forbids() {
        let plant = Plant::reference();
        let p = Policy::parse(DEFAULT_POLICY, "default", &plant).unwrap();
        let v = p.decide(
            Principal::Agent("optimiser"),
            "set_setpoint",
            "past",
            &ctx(true),
        );
        assert!(v.allowed, "{v:?}");
        assert_eq!(v.policies.len(), 1);
        assert!(v.policies[0].starts_with("optimiser-setpoints: "), "{v:?}");
        // Deny unless permitted.
        let v = p.decide(
            Principal::Agent("optimiser"),
            "stop_line",
            "line",
            &ctx(true),
        );
        assert!(!v.allowed);
        assert_eq!(v.explain(), "no policy permits it");
        let v = p.decide(
            Principal::Agent("stranger"),
            "set_setpoint",
            "pump",
            &ctx(true),
        );
        assert!(!v.allowed);
        // A forbid overrides the permit, and says why.
        let v = p.decide(
            Principal::Agent("optimiser"),
            "set_setpoint",
            "pump",
            &ctx(false),
        );
        assert!(!v.allowed);
        assert!(
            v.explain()
                .starts_with("forbidden by no-setpoint-change-on-untrusted-data: "),
            "{}",
            v.explain()
        );
    }

    /// Each decision's Cedar context, and each agent's verdict, are reused while the
    /// process state is the same: every field of the state, the agent, the kind and the
    /// asset change the verdict here (a permit and a forbid that overrides it), and each
    /// decision, asked twice in every state, forwards, backwards and forwards again, is
    /// compared with a fresh copy of the policy, which evaluates anew.
    #[test]
    fn a_reused_context_and_verdict_decide_as_fresh_ones() {
        let plant = Plant::reference();
        let text = "@id(\"calm\")\npermit (principal, action in [Twinguard::Action::\"set_setpoint\", Twinguard::Action::\"maintenance\"], resource)\nwhen { context.line_running && context.inputs_trusted && context.anomalies < 2 && !context.anomaly_kinds.contains(\"attack\") };\n@id(\"not-the-pump\")\nforbid (principal == Twinguard::Agent::\"scheduler\", action, resource == Twinguard::Asset::\"pump\");";
        let p = Policy::parse(text, "calm", &plant).unwrap();
        let mut states = Vec::new();
        for line_running in [true, false] {
            for inputs_trusted in [true, false] {
                for anomalies in [0, 1, 2] {
                    for kinds in [
                        vec![],
                        vec!["attack".to_string()],
                        vec!["sensor_fault".into()],
                    ] {
                        states.push(ProcessContext {
                            line_running,
                            inputs_trusted,
                            anomalies,
                            anomaly_kinds: kinds,
                        });
                    }
                }
            }
        }
        let forwards = states.iter();
        let back = states.iter().rev();
        let (mut allowed, mut denied, mut forbidden) = (0, 0, 0);
        for state in forwards.clone().chain(back).chain(forwards) {
            for _ in 0..2 {
                for agent in ["optimiser", "scheduler"] {
                    for kind in ["set_setpoint", "maintenance", "stop_line"] {
                        for asset in ["pump", "filler"] {
                            let ask =
                                |p: &Policy| p.decide(Principal::Agent(agent), kind, asset, state);
                            let (v, fresh) = (ask(&p), ask(&p.clone()));
                            assert_eq!(v, fresh, "{agent} {kind} {asset} {state:?}");
                            if v.allowed {
                                allowed += 1;
                            } else if v.policies.is_empty() {
                                denied += 1;
                            } else {
                                forbidden += 1;
                            }
                        }
                    }
                }
            }
        }
        assert!(
            allowed > 0 && denied > allowed && forbidden > 0,
            "{allowed} allowed, {denied} denied, {forbidden} forbidden"
        );
    }

    /// The verdict cache holds at most [`CACHED_VERDICTS`]: past that it starts again.
    #[test]
    fn the_verdict_cache_is_bounded() {
        let mut cached = Cached::new(ctx(true), Context::empty());
        let v = Verdict {
            allowed: true,
            policies: vec!["p: r".into()],
            errors: vec![],
        };
        for i in 0..CACHED_VERDICTS + 10 {
            cached.put(&format!("agent-{i}"), "set_setpoint", "pump", v.clone());
            assert!(cached.len <= CACHED_VERDICTS);
        }
        assert_eq!(cached.len, 10);
        assert_eq!(
            cached.verdicts.values().map(Vec::len).sum::<usize>(),
            cached.len
        );
        assert!(cached.get("agent-0", "set_setpoint", "pump").is_none());
        let last = format!("agent-{}", CACHED_VERDICTS + 9);
        assert_eq!(cached.get(&last, "set_setpoint", "pump"), Some(&v));
        assert!(cached.get(&last, "maintenance", "pump").is_none());
        assert!(cached.get(&last, "set_setpoint", "filler").is_none());
    }

    #[test]
    fn bad_policies_are_refused_with_their_location() {
        let plant = Plant::reference();
        // A syntax error.
        let e = Policy::parse(
            "@id(\"x\")\npermit (principal, action, resource)\n",
            "p.cedar",
            &plant,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("policy p.cedar:"), "{e}");
        // An attribute the schema does not have: caught by validation, located.
        let text =
            "@id(\"a\")\npermit (principal, action, resource)\nwhen { context.line_runing };";
        let e = Policy::parse(text, "p.cedar", &plant)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("policy p.cedar:3:"), "{e}");
        // An unknown entity type.
        let text = "@id(\"a\")\npermit (principal == Twinguard::Robot::\"r\", action, resource);";
        let e = Policy::parse(text, "p.cedar", &plant)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("policy p.cedar:2:"), "{e}");
        // A policy without an id.
        let e = Policy::parse("permit (principal, action, resource);", "p.cedar", &plant)
            .unwrap_err()
            .to_string();
        assert!(e.contains("@id"), "{e}");
        // The same id twice.
        let text = "@id(\"a\")\npermit (principal, action, resource);\n@id(\"a\")\nforbid (principal, action, resource);";
        let e = Policy::parse(text, "p.cedar", &plant)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("used twice") && e.starts_with("policy p.cedar:3:"),
            "{e}"
        );
    }

    /// The split by principal decides exactly as the whole set: a principal's own permits
    /// apply to it alone, and general forbids and permits to everyone.
    #[test]
    fn the_principal_index_decides_as_the_whole_set() {
        let plant = Plant::reference();
        let mut text = String::new();
        for i in 0..50 {
            text.push_str(&format!("@id(\"a{i}\")\npermit (principal == Twinguard::Agent::\"agent-{i}\", action == Twinguard::Action::\"set_setpoint\", resource == Twinguard::Asset::\"pump\");\n"));
        }
        text.push_str("@id(\"all-maintenance\")\npermit (principal is Twinguard::Agent, action == Twinguard::Action::\"maintenance\", resource);\n");
        text.push_str("@id(\"no-7\")\nforbid (principal, action, resource) when { principal == Twinguard::Agent::\"agent-7\" };\n");
        let p = Policy::parse(&text, "p", &plant).unwrap();
        for i in 0..60 {
            let a = format!("agent-{i}");
            let set = p.decide(Principal::Agent(&a), "set_setpoint", "pump", &ctx(true));
            let other = p.decide(Principal::Agent(&a), "set_setpoint", "past", &ctx(true));
            let maint = p.decide(Principal::Agent(&a), "maintenance", "pump", &ctx(true));
            assert_eq!(set.allowed, i < 50 && i != 7, "{a}: {set:?}");
            assert!(!other.allowed, "{a}");
            assert_eq!(maint.allowed, i != 7, "{a}: {maint:?}");
        }
    }

    #[test]
    fn humans_are_decided_by_their_roles() {
        let plant = Plant::reference();
        let text = "@id(\"approvers-stop\")\n@reason(\"approvers may stop the line\")\npermit (principal is Twinguard::Human, action == Twinguard::Action::\"stop_line\", resource)\nwhen { principal.roles.contains(\"approver\") };";
        let p = Policy::parse(text, "p.cedar", &plant).unwrap();
        let ana = Human::new("ana", &["viewer", "operator", "approver"]);
        let bo = Human::new("bo", &["viewer"]);
        assert!(
            p.decide(Principal::Human(&ana), "stop_line", "line", &ctx(true))
                .allowed
        );
        assert!(
            !p.decide(Principal::Human(&bo), "stop_line", "line", &ctx(true))
                .allowed
        );
    }

    /// People's reviews are decided by policy: the default lets approvers approve, reject,
    /// resume and reset; a plant's own policy can narrow who reviews what.
    #[test]
    fn reviews_are_decided_by_policy() {
        let plant = Plant::reference();
        let p = Policy::parse(DEFAULT_POLICY, "default", &plant).unwrap();
        let ana = Human::new("ana", &["viewer", "operator", "approver"]);
        let olga = Human::new("olga", &["viewer", "operator"]);
        let review = Review {
            kind: "set_setpoint".into(),
            agent: "optimiser".into(),
            dual: false,
            process: ctx(true),
        };
        for action in HUMAN_ACTIONS {
            let asset = if matches!(action, "approve" | "reject") {
                "past"
            } else {
                "line"
            };
            let v = p.decide_review(&ana, action, asset, &review);
            assert!(v.allowed, "{action}: {v:?}");
            assert!(
                !p.decide_review(&olga, action, asset, &review).allowed,
                "{action}"
            );
        }
        // Resuming is about the line, not an asset.
        assert!(!p.decide_review(&ana, "resume", "pump", &review).allowed);
        // A narrower plant policy: only the QA lead approves pasteuriser changes, and
        // never the second approval of her own first.
        let text = format!(
            "{DEFAULT_POLICY}\n@id(\"qa-past\")\n@reason(\"only the QA lead approves pasteuriser changes\")\nforbid (principal, action == Twinguard::Action::\"approve\", resource == Twinguard::Asset::\"past\")\nunless {{ principal == Twinguard::Human::\"qa-lead\" }};"
        );
        let p = Policy::parse(&text, "plant.cedar", &plant).unwrap();
        let qa = Human::new("qa-lead", &["viewer", "operator", "approver"]);
        let v = p.decide_review(&ana, "approve", "past", &review);
        assert!(!v.allowed);
        assert!(
            v.explain().starts_with("forbidden by qa-past: "),
            "{}",
            v.explain()
        );
        assert!(p.decide_review(&ana, "approve", "pump", &review).allowed);
        assert!(p.decide_review(&ana, "reject", "past", &review).allowed);
        assert!(p.decide_review(&qa, "approve", "past", &review).allowed);
        // A review context attribute the schema does not have is refused when loaded.
        let bad = "@id(\"x\")\npermit (principal, action == Twinguard::Action::\"approve\", resource)\nwhen { context.kinds == \"x\" };";
        assert!(Policy::parse(bad, "bad.cedar", &plant).is_err());
    }

    /// Shapes that exhaust Cedar's recursive parser (found by fuzzing: deep brackets, long
    /// conditional and operator chains) are refused with their location before Cedar sees
    /// them; brackets inside strings and comments do not count.
    #[test]
    fn shapes_that_would_exhaust_the_parser_are_refused_with_their_place() {
        let plant = Plant::reference();
        let head = "@id(\"x\")\npermit (principal, action, resource) when { ";
        let deep = format!("{head}{}true{} }};", "(".repeat(1000), ")".repeat(1000));
        let ifs = format!(
            "{head}{}true{} }};",
            "if true then ".repeat(3000),
            " else false".repeat(3000)
        );
        let chain = format!("{head}{} == 1 }};", vec!["1"; 200_000].join(" + "));
        for (what, text, line, column) in [
            // The body starts at column 45, inside the `{` that is the first bracket.
            ("brackets", &deep, 2, 45 + 31),
            ("conditionals", &ifs, 2, 45 + 13 * 32),
            // 15 tokens before the body; the 4,097th is the 2,041st `+`.
            ("tokens", &chain, 2, 47 + 4 * 2040),
        ] {
            match Policy::parse(text, "deep.cedar", &plant) {
                Err(PolicyError::At {
                    line: l,
                    column: c,
                    message,
                    ..
                }) => {
                    assert_eq!((l, c), (line, column), "{what}: {message}");
                }
                other => panic!("{what}: {other:?}"),
            }
        }
        // Within the limits, and brackets in strings or comments, are fine.
        let fine = format!(
            "// ((((((((((((((((((((((((((((((((((((((((\n{head}{}true{} && context.anomaly_kinds.contains(\"((((((((((((((((((((((((((((((((((((((\") }};",
            "(".repeat(20),
            ")".repeat(20)
        );
        assert!(Policy::parse(&fine, "fine.cedar", &plant).is_ok());
        assert!(Policy::parse(DEFAULT_POLICY, "default.cedar", &plant).is_ok());
    }
}
