//! The configuration file: ingest limits, the trust actuation requires, zones, sources and
//! conduits (IEC 62443). [`Config::parse`] reports every error it finds, each with its line
//! and column, so that `twinguard check-config` can explain all of them at once.

use std::collections::HashSet;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

/// The configuration the demo runs with when no file is given.
pub const DEFAULT_CONFIG: &str = include_str!("../default.toml");
/// Largest configuration file accepted, in bytes.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub ingest: ingest::IngestConfig,
    #[serde(default)]
    pub actuation: Actuation,
    #[serde(default)]
    pub guard: GuardSection,
    #[serde(default)]
    pub detect: DetectSection,
    #[serde(default)]
    pub predict: PredictSection,
    #[serde(default)]
    pub audit: AuditSection,
    pub twinguard: Node,
    #[serde(default)]
    pub zones: Vec<Zone>,
    #[serde(default)]
    pub sources: Vec<Source>,
    #[serde(default)]
    pub conduits: Vec<Conduit>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actuation {
    pub min_trust: Spanned<String>,
}

/// The guard: the Cedar policy file and the per-agent limits it holds beside the plant
/// file's envelopes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardSection {
    /// Cedar policy file, relative to the configuration file (none: the built-in policy).
    pub policy_file: Option<Spanned<String>>,
    /// Proposals of one agent accepted (executed or sent to a human) in any sliding hour.
    pub agent_actions_per_hour: Spanned<u32>,
    /// The same, for one agent on one asset.
    pub agent_asset_actions_per_hour: Spanned<u32>,
    /// Minutes an agent's token lives (1 to 60); agents fetch the next one before expiry.
    pub token_ttl_min: Spanned<u32>,
    /// Minutes a proposal waits for its approvals before it expires (1 to 1440).
    pub approval_ttl_min: Spanned<u32>,
    /// Limits that put the agents in advisory mode until an approver resets them.
    pub breakers: Breakers,
}

/// `[detect]`: the multivariate model in the twin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectSection {
    /// Whether the model runs (it is on when `model_file` is given).
    pub multivariate: bool,
    /// Hours of data learnt before watching (0 < h <= 168).
    pub learn_hours: Spanned<f64>,
    /// Seconds of data time between two rows (1 to 3600).
    pub period_s: Spanned<u32>,
    /// Confidence of the control limits and the threshold (0.9 to 0.99999).
    pub confidence: Spanned<f64>,
    /// Rows whose scores are averaged before comparing with the threshold (1 to 1000).
    pub smoothing: Spanned<u32>,
    /// Signals the learnt model leaves out (counters, slow outside drivers).
    pub exclude: Vec<Spanned<String>>,
    /// A model fitted by `twinguard detect fit`, relative to the configuration file.
    pub model_file: Option<Spanned<String>>,
    /// The name of an admitted detector model in the data directory's registry
    /// (`twinguard model admit`): its active version watches, its shadow version runs
    /// beside it, recorded and never acted on.
    pub registry_model: Option<Spanned<String>>,
    /// Lets `model_file`, which was not admitted, run.
    pub allow_unadmitted_model: bool,
}

impl Default for DetectSection {
    fn default() -> Self {
        DetectSection {
            multivariate: false,
            learn_hours: Spanned::new(0..0, 2.0),
            period_s: Spanned::new(0..0, 5),
            confidence: Spanned::new(0..0, 0.999),
            smoothing: Spanned::new(0..0, 12),
            exclude: Vec::new(),
            model_file: None,
            registry_model: None,
            allow_unadmitted_model: false,
        }
    }
}

/// `[predict]`: the pump's remaining useful life, estimated live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PredictSection {
    /// A RUL model for the pump (`twinguard bench pump --model-out`), relative to the
    /// configuration file; none: no estimate.
    pub pump_model: Option<Spanned<String>>,
    /// An admitted rul model, by name (`twinguard model admit`): its active version runs.
    pub registry_model: Option<Spanned<String>>,
    /// Lets `pump_model`, which was not admitted, run.
    pub allow_unadmitted_model: bool,
    /// Warn when failure within this many hours becomes likely (0.5 to 168).
    pub horizon_h: Spanned<f64>,
}

impl Default for PredictSection {
    fn default() -> Self {
        PredictSection {
            pump_model: None,
            registry_model: None,
            allow_unadmitted_model: false,
            horizon_h: Spanned::new(0..0, 8.0),
        }
    }
}

/// `[audit]`: when the log's checkpoints are signed, and how long records are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// Sign a checkpoint at most this many seconds after a record (0.1 to 3600): records
    /// newer than the newest checkpoint are not yet committed to.
    pub checkpoint_interval_s: Spanned<f64>,
    /// ... or after this many records, whichever comes first (1 to 10,000,000).
    pub checkpoint_records: Spanned<u64>,
    /// Records older than this lose their bodies (their leaves stay, so proofs stay
    /// checkable): 1 to 36,500 days.
    pub retention_days: Spanned<u32>,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            checkpoint_interval_s: Spanned::new(0..0, 1.0),
            checkpoint_records: Spanned::new(0..0, 100_000),
            retention_days: Spanned::new(0..0, 183),
        }
    }
}

impl AuditSection {
    pub fn checkpoint_every(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.checkpoint_interval_s.get_ref().clamp(0.1, 3600.0))
    }

    pub fn retention_ms(&self) -> i64 {
        i64::from(*self.retention_days.get_ref()) * 86_400_000
    }
}

/// `[guard.breakers]`: see `guard::BreakerLimits` (the same fields and defaults).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Breakers {
    pub alarms_per_hour: u32,
    pub actions_per_10_min: u32,
    pub integrity_failures_per_hour: u32,
    pub model_disagreements_per_hour: u32,
}

impl Default for Breakers {
    fn default() -> Self {
        Breakers {
            alarms_per_hour: 60,
            actions_per_10_min: 12,
            integrity_failures_per_hour: 30,
            model_disagreements_per_hour: 6,
        }
    }
}

impl Default for GuardSection {
    fn default() -> Self {
        GuardSection {
            policy_file: None,
            agent_actions_per_hour: Spanned::new(0..0, 60),
            agent_asset_actions_per_hour: Spanned::new(0..0, 20),
            token_ttl_min: Spanned::new(0..0, 15),
            approval_ttl_min: Spanned::new(0..0, 60),
            breakers: Breakers::default(),
        }
    }
}

impl Default for Actuation {
    fn default() -> Self {
        Actuation {
            min_trust: Spanned::new(0..0, "channel".into()),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub zone: Spanned<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    pub id: Spanned<String>,
    pub security_level: Spanned<u8>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub id: Spanned<String>,
    pub protocol: Spanned<String>,
    pub zone: Spanned<String>,
    /// MQTT: `"embedded"` or `HOST:PORT`.
    #[serde(default)]
    pub broker: Option<Spanned<String>>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<Spanned<String>>,
    #[serde(default)]
    pub allow_unsigned: bool,
    /// `"3.1.1"` (default) or `"5"`.
    #[serde(default)]
    pub mqtt_version: Option<Spanned<String>>,
    /// MQTT: what the payloads are: `"twinguard"` (signed frames, docs/frame-format.md;
    /// the default) or `"sparkplug"` (Sparkplug B; unsigned, so its values are untrusted).
    #[serde(default)]
    pub payload: Option<Spanned<String>>,
    /// MQTT with Sparkplug B payloads: the Sparkplug group id.
    #[serde(default)]
    pub sparkplug_group: Option<Spanned<String>>,
    /// MQTT: keep twinguard's subscription session at the broker between connections, so
    /// that QoS 1 frames published while it is away (or across a broker restart, when the
    /// broker persists sessions) are delivered when it is back. Default true; the embedded
    /// broker keeps sessions in memory only.
    #[serde(default = "yes")]
    pub persistent_session: bool,
    /// TLS to an external broker: the CA that signs the broker's certificate and, for
    /// mutual TLS, this client's certificate and key (PEM files).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// OPC UA: the server's endpoint URL (`opc.tcp://host:port/path`).
    #[serde(default)]
    pub endpoint: Option<Spanned<String>>,
    /// OPC UA: `Basic256Sha256` (default), `Aes128_Sha256_RsaOaep`, `Aes256_Sha256_RsaPss`,
    /// or `None` (only with `allow_security_none`).
    #[serde(default)]
    pub security_policy: Option<Spanned<String>>,
    /// OPC UA: `SignAndEncrypt` (default), `Sign`, or `None`.
    #[serde(default)]
    pub security_mode: Option<Spanned<String>>,
    /// OPC UA: accept security mode None; values from such a source are untrusted.
    #[serde(default)]
    pub allow_security_none: bool,
    /// OPC UA: an X.509 user identity (certificate and private key files) instead of
    /// `username`/`password_file`.
    #[serde(default)]
    pub user_cert_file: Option<Spanned<String>>,
    #[serde(default)]
    pub user_key_file: Option<Spanned<String>>,
    /// OPC UA: publishing interval of the subscription.
    #[serde(default)]
    pub publishing_ms: Option<u64>,
    /// OPC UA: the nodes to subscribe to and the twin signals they feed.
    #[serde(default)]
    pub nodes: Vec<UaNode>,
    /// OPC UA actuation: the node each setpoint is written to (approved commands only).
    #[serde(default)]
    pub writes: Vec<UaWrite>,
    /// OPC UA actuation: the methods called for line stop, start and maintenance.
    #[serde(default)]
    pub calls: Vec<UaCall>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UaWrite {
    pub setpoint: Spanned<String>,
    /// A NodeId (`ns=2;s=pump.speed_sp`) or a browse path starting with `/`.
    pub node: Spanned<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UaCall {
    /// `stop_line`, `start_line` or `maintenance`.
    pub command: Spanned<String>,
    /// The object the method belongs to, and the method (NodeIds or browse paths).
    pub object: Spanned<String>,
    pub method: Spanned<String>,
}

/// An OPC UA node as configured: a NodeId (`ns=2;s=name`) or a browse path from the
/// Objects folder (`/2:line1/2:tank`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeSpec {
    Id(String),
    Path(String),
}

/// A node given as a NodeId, or as a browse path when it starts with `/`.
pub fn node_ref(s: &str) -> NodeSpec {
    if s.starts_with('/') {
        NodeSpec::Path(s.to_string())
    } else {
        NodeSpec::Id(s.to_string())
    }
}

/// OPC UA security policies accepted in a configuration (the deprecated Basic128Rsa15 and
/// Basic256 are not).
pub const UA_POLICIES: [&str; 4] = [
    "Basic256Sha256",
    "Aes128_Sha256_RsaOaep",
    "Aes256_Sha256_RsaPss",
    "None",
];
/// OPC UA message security modes.
pub const UA_MODES: [&str; 3] = ["SignAndEncrypt", "Sign", "None"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UaNode {
    pub signal: Spanned<String>,
    pub unit: String,
    /// `ns=2;s=tank.level`, or give `browse_path` instead.
    #[serde(default)]
    pub node_id: Option<Spanned<String>>,
    /// From the Objects folder, `/2:line1/2:tank/2:tank&.level` (`&` escapes `.` and `/`).
    #[serde(default)]
    pub browse_path: Option<Spanned<String>>,
    /// Sampling interval (0 = as fast as the server can).
    #[serde(default)]
    pub sampling_ms: f64,
    /// Absolute deadband: changes smaller than this are not reported.
    #[serde(default)]
    pub deadband: Option<f64>,
    #[serde(default = "default_queue")]
    pub queue_size: u32,
}

fn yes() -> bool {
    true
}

fn default_queue() -> u32 {
    100
}

impl UaNode {
    pub fn node_ref(&self) -> Option<NodeSpec> {
        match (&self.node_id, &self.browse_path) {
            (Some(id), None) => Some(NodeSpec::Id(id.get_ref().clone())),
            (None, Some(p)) => Some(NodeSpec::Path(p.get_ref().clone())),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_file: Spanned<String>,
    #[serde(default)]
    pub cert_file: Option<Spanned<String>>,
    #[serde(default)]
    pub key_file: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conduit {
    pub id: Spanned<String>,
    pub from: Spanned<String>,
    pub to: Spanned<String>,
    pub protocols: Spanned<Vec<String>>,
}

/// One problem, located.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Where a broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broker {
    Embedded,
    External { host: String, port: u16 },
}

const PROTOCOLS: [&str; 2] = ["mqtt", "opcua"];

fn locate(text: &str, span: Range<usize>) -> (usize, usize) {
    let before = text.get(..span.start.min(text.len())).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

impl Config {
    /// The trust level a `min_trust` name stands for.
    pub fn trust_level(name: &str) -> Option<ingest::Trust> {
        match name {
            "verified" => Some(ingest::Trust::Verified),
            "channel" => Some(ingest::Trust::Channel),
            "untrusted" => Some(ingest::Trust::Untrusted),
            _ => None,
        }
    }

    /// The trust actuation requires.
    pub fn min_trust(&self) -> ingest::Trust {
        Config::trust_level(self.actuation.min_trust.get_ref()).unwrap_or(ingest::Trust::Verified)
    }
}

impl Source {
    /// The Sparkplug B group, when the source carries Sparkplug B payloads.
    pub fn sparkplug(&self) -> Option<&str> {
        match &self.payload {
            Some(p) if p.get_ref() == "sparkplug" => Some(
                self.sparkplug_group
                    .as_ref()
                    .map_or("twinguard", |g| g.get_ref().as_str()),
            ),
            _ => None,
        }
    }

    /// True when the source speaks MQTT 5.
    pub fn mqtt5(&self) -> bool {
        self.mqtt_version
            .as_ref()
            .is_some_and(|v| v.get_ref() == "5")
    }

    pub fn broker(&self) -> Result<Broker, String> {
        let Some(b) = &self.broker else {
            return Err("an MQTT source needs broker = \"embedded\" or \"HOST:PORT\"".into());
        };
        let b = b.get_ref();
        if b == "embedded" {
            return Ok(Broker::Embedded);
        }
        b.rsplit_once(':')
            .and_then(|(h, p)| {
                p.parse::<u16>()
                    .ok()
                    .filter(|_| !h.is_empty())
                    .map(|p| Broker::External {
                        host: h.to_string(),
                        port: p,
                    })
            })
            .ok_or_else(|| format!("broker {b:?} is neither \"embedded\" nor HOST:PORT"))
    }
}

/// The checks of an OPC UA source.
fn check_opcua_source(s: &Source, err: &mut dyn FnMut(Range<usize>, String)) {
    let id = s.id.get_ref();
    if let Some(b) = &s.broker {
        err(
            b.span(),
            format!("source {id:?}: broker is for MQTT sources; OPC UA uses endpoint"),
        );
    }
    if s.tls.is_some()
        || s.mqtt_version.is_some()
        || s.allow_unsigned
        || s.payload.is_some()
        || s.sparkplug_group.is_some()
    {
        err(
            s.protocol.span(),
            format!(
                "source {id:?}: tls, mqtt_version, allow_unsigned, payload and sparkplug_group are for MQTT sources (OPC UA security is security_policy and security_mode)"
            ),
        );
    }
    match &s.endpoint {
        None => err(
            s.id.span(),
            format!("source {id:?}: an OPC UA source needs endpoint = \"opc.tcp://HOST:PORT/\""),
        ),
        Some(e) if !e.get_ref().starts_with("opc.tcp://") || e.get_ref().len() <= 10 => err(
            e.span(),
            format!(
                "source {id:?}: endpoint {:?} is not an opc.tcp:// URL",
                e.get_ref()
            ),
        ),
        Some(_) => {}
    }
    let policy = match &s.security_policy {
        None => Some("Basic256Sha256"),
        Some(p) => {
            let known = UA_POLICIES.contains(&p.get_ref().as_str());
            if !known {
                err(
                    p.span(),
                    format!(
                        "source {id:?}: security_policy {:?} is not one of {} (Basic128Rsa15 and Basic256 are deprecated and refused)",
                        p.get_ref(),
                        UA_POLICIES.join(", ")
                    ),
                );
            }
            known.then_some(p.get_ref().as_str())
        }
    };
    let mode = match &s.security_mode {
        None => Some("SignAndEncrypt"),
        Some(m) => {
            let known = UA_MODES.contains(&m.get_ref().as_str());
            if !known {
                err(
                    m.span(),
                    format!(
                        "source {id:?}: security_mode {:?} is not \"SignAndEncrypt\", \"Sign\" or \"None\"",
                        m.get_ref()
                    ),
                );
            }
            known.then_some(m.get_ref().as_str())
        }
    };
    if let (Some(p), Some(m)) = (policy, mode) {
        let none_p = p == "None";
        let none_m = m == "None";
        if none_p != none_m {
            let span = s
                .security_mode
                .as_ref()
                .or(s.security_policy.as_ref())
                .map_or(s.id.span(), |x| x.span());
            err(
                span,
                format!(
                    "source {id:?}: security policy None goes only with security mode None, and the other way round"
                ),
            );
        } else if none_p && !s.allow_security_none {
            let span = s.security_mode.as_ref().map_or(s.id.span(), |x| x.span());
            err(
                span,
                format!(
                    "source {id:?}: security mode None is refused; set allow_security_none = true to accept it (its values are then untrusted and drive nothing)"
                ),
            );
        }
    }
    if s.user_cert_file.is_some() != s.user_key_file.is_some() {
        let span = s
            .user_cert_file
            .as_ref()
            .or(s.user_key_file.as_ref())
            .map_or(s.id.span(), |f| f.span());
        err(
            span,
            format!("source {id:?}: user_cert_file and user_key_file go together"),
        );
    }
    if s.user_cert_file.is_some() && (s.username.is_some() || s.password_file.is_some()) {
        err(
            s.id.span(),
            format!("source {id:?}: give either a user certificate or username/password_file"),
        );
    }
    if s.username.is_some() != s.password_file.is_some() {
        err(
            s.id.span(),
            format!("source {id:?}: username and password_file go together"),
        );
    }
    if s.nodes.is_empty() {
        err(
            s.id.span(),
            format!("source {id:?}: no [[sources.nodes]]: nothing to subscribe to"),
        );
    }
    let mut setpoints = HashSet::new();
    for w in &s.writes {
        if !setpoints.insert(w.setpoint.get_ref().as_str()) {
            err(
                w.setpoint.span(),
                format!(
                    "source {id:?}: setpoint {:?} is written twice",
                    w.setpoint.get_ref()
                ),
            );
        }
    }
    let mut commands = HashSet::new();
    for c in &s.calls {
        let name = c.command.get_ref().as_str();
        if !["stop_line", "start_line", "maintenance"].contains(&name) {
            err(
                c.command.span(),
                format!(
                    "source {id:?}: command {name:?} is not stop_line, start_line or maintenance"
                ),
            );
        } else if !commands.insert(name) {
            err(
                c.command.span(),
                format!("source {id:?}: command {name:?} is called twice"),
            );
        }
    }
    let mut signals = HashSet::new();
    for n in &s.nodes {
        if n.node_ref().is_none() {
            err(
                n.signal.span(),
                format!(
                    "source {id:?}: node for signal {:?} needs exactly one of node_id and browse_path",
                    n.signal.get_ref()
                ),
            );
        }
        if !signals.insert(n.signal.get_ref().as_str()) {
            err(
                n.signal.span(),
                format!(
                    "source {id:?}: signal {:?} is mapped twice",
                    n.signal.get_ref()
                ),
            );
        }
        if !(n.sampling_ms >= 0.0 && n.sampling_ms.is_finite()) {
            err(
                n.signal.span(),
                format!(
                    "source {id:?}: sampling_ms of {:?} must be 0 or positive",
                    n.signal.get_ref()
                ),
            );
        }
        if n.deadband.is_some_and(|d| !(d >= 0.0 && d.is_finite())) {
            err(
                n.signal.span(),
                format!(
                    "source {id:?}: deadband of {:?} must be 0 or positive",
                    n.signal.get_ref()
                ),
            );
        }
    }
}

impl Config {
    /// Parses and checks a configuration; on failure returns every problem found.
    pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
        if text.len() > MAX_CONFIG_BYTES {
            return Err(vec![ConfigError {
                line: 1,
                column: 1,
                message: format!(
                    "the file is {} bytes, more than the limit of {MAX_CONFIG_BYTES}",
                    text.len()
                ),
            }]);
        }
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| locate(text, s));
            vec![ConfigError {
                line,
                column,
                message: e.message().to_string(),
            }]
        })?;
        let mut errors = Vec::new();
        let mut err = |span: Range<usize>, message: String| {
            let (line, column) = locate(text, span);
            errors.push(ConfigError {
                line,
                column,
                message,
            });
        };
        let i = &config.ingest;
        if i.max_age_ms <= 0 {
            err(
                0..0,
                format!("ingest.max_age_ms must be positive, got {}", i.max_age_ms),
            );
        }
        if i.max_future_ms < 0 {
            err(
                0..0,
                format!(
                    "ingest.max_future_ms must not be negative, got {}",
                    i.max_future_ms
                ),
            );
        }
        if !(1..=128).contains(&i.replay_window) {
            err(
                0..0,
                format!(
                    "ingest.replay_window must be 1 to 128, got {}",
                    i.replay_window
                ),
            );
        }
        for limit in [
            &config.guard.agent_actions_per_hour,
            &config.guard.agent_asset_actions_per_hour,
        ] {
            if *limit.get_ref() == 0 {
                err(
                    limit.span(),
                    "guard rate limits must be at least 1 (0 would refuse every action; use the policy to forbid)".into(),
                );
            }
        }
        for (what, value, max) in [
            ("token_ttl_min", &config.guard.token_ttl_min, 60),
            ("approval_ttl_min", &config.guard.approval_ttl_min, 1440),
        ] {
            if !(1..=max).contains(value.get_ref()) {
                err(
                    value.span(),
                    format!(
                        "guard.{what} must be 1 to {max} minutes, got {}",
                        value.get_ref()
                    ),
                );
            }
        }
        let d = &config.detect;
        let hours = *d.learn_hours.get_ref();
        if !(hours > 0.0 && hours <= 168.0) {
            err(
                d.learn_hours.span(),
                format!("detect.learn_hours must be more than 0 and at most 168, got {hours}"),
            );
        }
        if !(1..=3600).contains(d.period_s.get_ref()) {
            err(
                d.period_s.span(),
                format!(
                    "detect.period_s must be 1 to 3600 seconds, got {}",
                    d.period_s.get_ref()
                ),
            );
        }
        let confidence = *d.confidence.get_ref();
        if !(0.9..=0.99999).contains(&confidence) {
            err(
                d.confidence.span(),
                format!("detect.confidence must be 0.9 to 0.99999, got {confidence}"),
            );
        }
        if !(1..=1000).contains(d.smoothing.get_ref()) {
            err(
                d.smoothing.span(),
                format!(
                    "detect.smoothing must be 1 to 1000 rows, got {}",
                    d.smoothing.get_ref()
                ),
            );
        }
        if let (Some(_), Some(r)) = (&d.model_file, &d.registry_model) {
            err(
                r.span(),
                "detect.registry_model and detect.model_file both name the model: give one".into(),
            );
        }
        let unadmitted = |section: &str, key: &str| {
            format!(
                "{section}.{key} is a model that was not admitted (signed, scanned, run on golden data): admit it with `twinguard model admit` and name it with {section}.registry_model, or set {section}.allow_unadmitted_model = true to run it anyway"
            )
        };
        if let Some(f) = &d.model_file
            && !d.allow_unadmitted_model
        {
            err(f.span(), unadmitted("detect", "model_file"));
        }
        let pr = &config.predict;
        if let Some(f) = &pr.pump_model
            && !pr.allow_unadmitted_model
        {
            err(f.span(), unadmitted("predict", "pump_model"));
        }
        if let (Some(_), Some(r)) = (&pr.pump_model, &pr.registry_model) {
            err(
                r.span(),
                "predict.registry_model and predict.pump_model both name the model: give one"
                    .into(),
            );
        }
        let horizon = *config.predict.horizon_h.get_ref();
        if !(0.5..=168.0).contains(&horizon) {
            err(
                config.predict.horizon_h.span(),
                format!("predict.horizon_h must be 0.5 to 168 hours, got {horizon}"),
            );
        }
        let a = &config.audit;
        let interval = *a.checkpoint_interval_s.get_ref();
        if !(0.1..=3600.0).contains(&interval) {
            err(
                a.checkpoint_interval_s.span(),
                format!("audit.checkpoint_interval_s must be 0.1 to 3600 seconds, got {interval}"),
            );
        }
        if !(1..=10_000_000).contains(a.checkpoint_records.get_ref()) {
            err(
                a.checkpoint_records.span(),
                format!(
                    "audit.checkpoint_records must be 1 to 10000000, got {}",
                    a.checkpoint_records.get_ref()
                ),
            );
        }
        if !(1..=36_500).contains(a.retention_days.get_ref()) {
            err(
                a.retention_days.span(),
                format!(
                    "audit.retention_days must be 1 to 36500 days, got {}",
                    a.retention_days.get_ref()
                ),
            );
        }
        let trust = config.actuation.min_trust.get_ref();
        if Config::trust_level(trust).is_none() {
            err(
                config.actuation.min_trust.span(),
                format!(
                    "actuation.min_trust {trust:?} is not \"verified\", \"channel\" or \"untrusted\""
                ),
            );
        }
        let mut zones = HashSet::new();
        for z in &config.zones {
            if !zones.insert(z.id.get_ref().as_str()) {
                err(
                    z.id.span(),
                    format!("zone {:?} is declared twice", z.id.get_ref()),
                );
            }
            if !(1..=4).contains(z.security_level.get_ref()) {
                err(
                    z.security_level.span(),
                    format!("security_level of zone {:?} must be 1 to 4", z.id.get_ref()),
                );
            }
        }
        let known = |z: &str| zones.contains(z);
        let zone_list = || {
            let mut v: Vec<&str> = zones.iter().copied().collect();
            v.sort_unstable();
            v.join(", ")
        };
        if !known(config.twinguard.zone.get_ref()) {
            err(
                config.twinguard.zone.span(),
                format!(
                    "twinguard.zone {:?} is not a declared zone (declared: {})",
                    config.twinguard.zone.get_ref(),
                    zone_list()
                ),
            );
        }
        let mut conduit_ids = HashSet::new();
        for c in &config.conduits {
            if !conduit_ids.insert(c.id.get_ref().as_str()) {
                err(
                    c.id.span(),
                    format!("conduit {:?} is declared twice", c.id.get_ref()),
                );
            }
            for end in [&c.from, &c.to] {
                if !known(end.get_ref()) {
                    err(
                        end.span(),
                        format!(
                            "conduit {:?}: zone {:?} is not declared (declared: {})",
                            c.id.get_ref(),
                            end.get_ref(),
                            zone_list()
                        ),
                    );
                }
            }
            for p in c.protocols.get_ref() {
                if !PROTOCOLS.contains(&p.as_str()) {
                    err(
                        c.protocols.span(),
                        format!(
                            "conduit {:?}: unknown protocol {p:?} (known: {})",
                            c.id.get_ref(),
                            PROTOCOLS.join(", ")
                        ),
                    );
                }
            }
        }
        let mut source_ids = HashSet::new();
        for s in &config.sources {
            let id = s.id.get_ref();
            if !source_ids.insert(id.as_str()) {
                err(s.id.span(), format!("source {id:?} is declared twice"));
            }
            if !PROTOCOLS.contains(&s.protocol.get_ref().as_str()) {
                err(
                    s.protocol.span(),
                    format!(
                        "source {id:?}: unknown protocol {:?} (known: {})",
                        s.protocol.get_ref(),
                        PROTOCOLS.join(", ")
                    ),
                );
            }
            if !known(s.zone.get_ref()) {
                err(
                    s.zone.span(),
                    format!(
                        "source {id:?}: zone {:?} is not declared (declared: {})",
                        s.zone.get_ref(),
                        zone_list()
                    ),
                );
            } else if !config.conduits.iter().any(|c| {
                c.from.get_ref() == s.zone.get_ref()
                    && c.to.get_ref() == config.twinguard.zone.get_ref()
                    && c.protocols.get_ref().contains(s.protocol.get_ref())
            }) {
                err(
                    s.zone.span(),
                    format!(
                        "source {id:?}: no conduit allows {} from zone {:?} to twinguard's zone {:?}; the flow would be refused",
                        s.protocol.get_ref(),
                        s.zone.get_ref(),
                        config.twinguard.zone.get_ref()
                    ),
                );
            }
            if let Some(v) = &s.mqtt_version
                && v.get_ref() != "3.1.1"
                && v.get_ref() != "5"
            {
                err(
                    v.span(),
                    format!(
                        "source {id:?}: mqtt_version {:?} is not \"3.1.1\" or \"5\"",
                        v.get_ref()
                    ),
                );
            }
            if s.protocol.get_ref() == "opcua" {
                check_opcua_source(s, &mut err);
                continue;
            }
            let broker_span = s.broker.as_ref().map_or(s.id.span(), |b| b.span());
            if let Some(p) = &s.payload
                && p.get_ref() != "twinguard"
                && p.get_ref() != "sparkplug"
            {
                err(
                    p.span(),
                    format!(
                        "source {id:?}: payload {:?} is not \"twinguard\" or \"sparkplug\"",
                        p.get_ref()
                    ),
                );
            }
            if let Some(g) = &s.sparkplug_group {
                if s.sparkplug().is_none() {
                    err(
                        g.span(),
                        format!("source {id:?}: sparkplug_group needs payload = \"sparkplug\""),
                    );
                } else if g.get_ref().is_empty() || g.get_ref().contains(['/', '+', '#']) {
                    err(
                        g.span(),
                        format!(
                            "source {id:?}: sparkplug_group {:?} must be non-empty without / + #",
                            g.get_ref()
                        ),
                    );
                }
            }
            if let Some(e) = &s.endpoint {
                err(
                    e.span(),
                    format!("source {id:?}: endpoint is for OPC UA sources; MQTT uses broker"),
                );
            }
            if !s.nodes.is_empty() {
                err(
                    s.id.span(),
                    format!("source {id:?}: nodes are for OPC UA sources"),
                );
            }
            match s.broker() {
                Err(m) => err(broker_span, format!("source {id:?}: {m}")),
                Ok(Broker::Embedded) if s.username.is_some() || s.password_file.is_some() => {
                    err(
                        broker_span,
                        format!(
                            "source {id:?}: the embedded broker makes its own credentials; remove username and password_file"
                        ),
                    );
                }
                Ok(_) => {}
            }
        }
        for s in &config.sources {
            if let Some(t) = &s.tls
                && t.cert_file.is_some() != t.key_file.is_some()
            {
                let span = t
                    .cert_file
                    .as_ref()
                    .or(t.key_file.as_ref())
                    .map_or(t.ca_file.span(), |f| f.span());
                err(
                    span,
                    format!(
                        "source {:?}: tls needs both cert_file and key_file for mutual TLS, or neither",
                        s.id.get_ref()
                    ),
                );
            }
        }
        if config.sources.is_empty() {
            err(
                0..0,
                "no [[sources]]: twinguard would receive nothing".into(),
            );
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors)
        }
    }

    pub fn default_config() -> Config {
        match Config::parse(DEFAULT_CONFIG) {
            Ok(c) => c,
            Err(e) => unreachable!("embedded default configuration is invalid: {e:?}"),
        }
    }

    /// The zone of a source.
    pub fn zone_of(&self, source: &Source) -> String {
        source.zone.get_ref().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<ConfigError> {
        Config::parse(text).err().unwrap_or_default()
    }

    #[test]
    fn default_is_valid() {
        let c = Config::default_config();
        assert_eq!(c.sources.len(), 1);
        assert_eq!(c.sources[0].broker(), Ok(Broker::Embedded));
    }

    const UA: &str = r#"
[twinguard]
zone = "operations"
[[zones]]
id = "cell"
security_level = 2
[[zones]]
id = "operations"
security_level = 3
[[conduits]]
id = "c"
from = "cell"
to = "operations"
protocols = ["opcua"]
[[sources]]
id = "plc"
protocol = "opcua"
zone = "cell"
endpoint = "opc.tcp://plc.example:4840/"
security_policy = "Basic256Sha256"
security_mode = "SignAndEncrypt"
[[sources.nodes]]
signal = "tank.level"
unit = "m"
node_id = "ns=2;s=tank.level"
"#;

    #[test]
    fn opcua_source_is_checked_with_locations() {
        let c = Config::parse(UA).unwrap();
        assert_eq!(c.sources[0].nodes.len(), 1);
        let bad = UA
            .replace("opc.tcp://plc.example:4840/", "http://plc")
            .replace("\"Basic256Sha256\"", "\"Basic128Rsa15\"")
            .replace("node_id = \"ns=2;s=tank.level\"", "");
        let e = errors(&bad);
        let msgs: Vec<&str> = e.iter().map(|e| e.message.as_str()).collect();
        assert!(
            msgs.iter().any(|m| m.contains("not an opc.tcp:// URL")),
            "{msgs:?}"
        );
        assert!(msgs.iter().any(|m| m.contains("deprecated")), "{msgs:?}");
        assert!(
            msgs.iter()
                .any(|m| m.contains("exactly one of node_id and browse_path")),
            "{msgs:?}"
        );
        let line_of = |needle: &str| bad.lines().position(|l| l.contains(needle)).unwrap() + 1;
        assert!(e.iter().any(|x| x.line == line_of("http://plc")));
        assert!(e.iter().any(|x| x.line == line_of("Basic128Rsa15")));
        // Security None needs the explicit allowance; policy and mode must agree.
        let none = UA
            .replace("\"Basic256Sha256\"", "\"None\"")
            .replace("\"SignAndEncrypt\"", "\"None\"");
        assert!(
            errors(&none)
                .iter()
                .any(|e| e.message.contains("allow_security_none"))
        );
        let allowed = none.replace(
            "security_mode = \"None\"",
            "security_mode = \"None\"\nallow_security_none = true",
        );
        assert!(Config::parse(&allowed).is_ok());
        let mixed = UA.replace("\"SignAndEncrypt\"", "\"None\"");
        assert!(
            errors(&mixed)
                .iter()
                .any(|e| e.message.contains("goes only with"))
        );
        // MQTT keys on an OPC UA source, and a conduit that does not allow OPC UA.
        let mqtt_keys = UA.replace(
            "protocol = \"opcua\"",
            "protocol = \"opcua\"\nbroker = \"embedded\"",
        );
        assert!(
            errors(&mqtt_keys)
                .iter()
                .any(|e| e.message.contains("broker is for MQTT"))
        );
        let no_conduit = UA.replace("protocols = [\"opcua\"]", "protocols = [\"mqtt\"]");
        assert!(
            errors(&no_conduit)
                .iter()
                .any(|e| e.message.contains("no conduit allows opcua"))
        );
    }

    #[test]
    fn unknown_key_is_located() {
        let text = DEFAULT_CONFIG.replace("max_age_ms = 60000", "max_age_ms = 60000\nmax_agee = 1");
        let e = errors(&text);
        assert_eq!(e.len(), 1);
        assert!(e[0].message.contains("max_agee"), "{e:?}");
        let line = text
            .lines()
            .position(|l| l.starts_with("max_agee"))
            .unwrap()
            + 1;
        assert_eq!(e[0].line, line);
    }

    #[test]
    fn every_semantic_error_is_reported_with_its_line() {
        let text = DEFAULT_CONFIG
            .replace("zone = \"cell\"", "zone = \"cel\"")
            .replace("security_level = 3", "security_level = 7")
            .replace("broker = \"embedded\"", "broker = \"nowhere\"")
            .replace("min_trust = \"channel\"", "min_trust = \"maybe\"")
            .replace("token_ttl_min = 15", "token_ttl_min = 0")
            .replace("approval_ttl_min = 60", "approval_ttl_min = 5000")
            .replace("learn_hours = 2.0", "learn_hours = 0.0")
            .replace("period_s = 5", "period_s = 0")
            .replace("confidence = 0.999", "confidence = 1.5")
            .replace("smoothing = 12", "smoothing = 0");
        let e = errors(&text);
        for what in [
            "guard.token_ttl_min must be 1 to 60 minutes, got 0",
            "guard.approval_ttl_min must be 1 to 1440 minutes, got 5000",
            "detect.learn_hours must be more than 0 and at most 168, got 0",
            "detect.period_s must be 1 to 3600 seconds, got 0",
            "detect.confidence must be 0.9 to 0.99999, got 1.5",
            "detect.smoothing must be 1 to 1000 rows, got 0",
        ] {
            let line = text
                .lines()
                .position(|l| {
                    l.starts_with(
                        what.split('.')
                            .nth(1)
                            .unwrap_or("")
                            .split(' ')
                            .next()
                            .unwrap_or(""),
                    )
                })
                .unwrap()
                + 1;
            assert!(
                e.iter().any(|x| x.message == what && x.line == line),
                "{what}: {e:?}"
            );
        }
        let msgs: Vec<&str> = e.iter().map(|e| e.message.as_str()).collect();
        assert!(
            msgs.iter()
                .any(|m| m.contains("zone \"cel\" is not declared")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter().any(|m| m.contains("security_level")),
            "{msgs:?}"
        );
        assert!(msgs.iter().any(|m| m.contains("\"nowhere\"")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("\"maybe\"")), "{msgs:?}");
        let cel_line = text.lines().position(|l| l.contains("\"cel\"")).unwrap() + 1;
        assert!(
            e.iter().any(|x| x.line == cel_line && x.column == 8),
            "{e:?}"
        );
    }

    #[test]
    fn a_flow_without_a_conduit_is_refused() {
        let text = DEFAULT_CONFIG.replace("from = \"cell\"", "from = \"operations\"");
        let e = errors(&text);
        assert!(
            e.iter().any(|e| e
                .message
                .contains("no conduit allows mqtt from zone \"cell\"")),
            "{e:?}"
        );
    }

    #[test]
    fn external_broker_parses() {
        let text = DEFAULT_CONFIG.replace(
            "broker = \"embedded\"",
            "broker = \"10.0.0.5:8883\"\nusername = \"tg\"\npassword_file = \"secrets/p\"",
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(
            c.sources[0].broker(),
            Ok(Broker::External {
                host: "10.0.0.5".into(),
                port: 8883
            })
        );
    }

    #[test]
    fn a_model_that_was_not_admitted_runs_only_when_allowed() {
        for (key, section) in [
            ("model_file = \"model.json\"", "detect"),
            ("pump_model = \"pump-rul.json\"", "predict"),
        ] {
            let text = DEFAULT_CONFIG.replace(&format!("# {key}"), key);
            assert_ne!(text, DEFAULT_CONFIG);
            let e = errors(&text);
            assert!(
                e.iter().any(|e| e.message.contains(&format!("{section}."))
                    && e.message.contains("not admitted")),
                "{e:?}"
            );
            let allowed = text.replacen(
                "# allow_unadmitted_model = false",
                "allow_unadmitted_model = true",
                if section == "detect" { 1 } else { 2 },
            );
            assert!(errors(&allowed).is_empty(), "{:?}", errors(&allowed));
        }
        let both = DEFAULT_CONFIG
            .replace(
                "# registry_model = \"pump-rul\"",
                "registry_model = \"pump-rul\"",
            )
            .replace(
                "# pump_model = \"pump-rul.json\"",
                "pump_model = \"pump-rul.json\"\nallow_unadmitted_model = true",
            )
            .replacen("# allow_unadmitted_model = false", "", 2);
        assert!(
            errors(&both)
                .iter()
                .any(|e| e.message.contains("both name the model")),
            "{:?}",
            errors(&both)
        );
    }
}
