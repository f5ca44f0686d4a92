//! The OPC UA source: connects to a server by endpoint URL with the configured security,
//! checks the server's certificate against the trust list, resolves the configured nodes
//! (NodeId or browse path), subscribes to them and forwards every data change as a
//! [`UaEvent`]. The stack reconnects with backoff and restores the subscription; a lost
//! connection is reported as [`UaEvent::Lost`] so that the gap is visible, never papered
//! over. [`Connection::write`] and [`Connection::call`] are the actuation path.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use opcua::client::{
    ClientBuilder, DataChangeCallback, IdentityToken, MonitoredItem, Session, SessionPollResult,
};
use opcua::crypto::{CertificateStore, SecurityPolicy, X509};
use opcua::types::{
    AttributeId, BrowsePath, CallMethodRequest, DataChangeFilter, DataChangeTrigger, DataValue,
    DeadbandType, EndpointDescription, ExtensionObject, MessageSecurityMode,
    MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, NodeId, ObjectId,
    ReadValueId, RelativePath, StatusCode, TimestampsToReturn, Variant, WriteValue,
};
use tokio::sync::mpsc;

use crate::pki;

/// A node given by NodeId (`ns=2;s=tank.level`) or by browse path from the Objects folder
/// (`/2:BottlingLine/2:tank/2:tank.level`).
#[derive(Debug, Clone, PartialEq)]
pub enum NodeRef {
    Id(String),
    Path(String),
}

impl std::fmt::Display for NodeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeRef::Id(s) | NodeRef::Path(s) => f.write_str(s),
        }
    }
}

/// Security policies twinguard offers. The deprecated Basic128Rsa15 and Basic256 are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    None,
    Basic256Sha256,
    Aes128Sha256RsaOaep,
    Aes256Sha256RsaPss,
}

impl Policy {
    /// Parses the names used in configuration files (and the OPC UA URIs' last part).
    pub fn parse(s: &str) -> Option<Policy> {
        match s {
            "None" => Some(Policy::None),
            "Basic256Sha256" => Some(Policy::Basic256Sha256),
            "Aes128_Sha256_RsaOaep" => Some(Policy::Aes128Sha256RsaOaep),
            "Aes256_Sha256_RsaPss" => Some(Policy::Aes256Sha256RsaPss),
            _ => None,
        }
    }

    pub(crate) fn stack(self) -> SecurityPolicy {
        match self {
            Policy::None => SecurityPolicy::None,
            Policy::Basic256Sha256 => SecurityPolicy::Basic256Sha256,
            Policy::Aes128Sha256RsaOaep => SecurityPolicy::Aes128Sha256RsaOaep,
            Policy::Aes256Sha256RsaPss => SecurityPolicy::Aes256Sha256RsaPss,
        }
    }
}

/// Message security modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    None,
    Sign,
    SignAndEncrypt,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "None" => Some(Mode::None),
            "Sign" => Some(Mode::Sign),
            "SignAndEncrypt" => Some(Mode::SignAndEncrypt),
            _ => None,
        }
    }

    pub(crate) fn stack(self) -> MessageSecurityMode {
        match self {
            Mode::None => MessageSecurityMode::None,
            Mode::Sign => MessageSecurityMode::Sign,
            Mode::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
        }
    }
}

/// How twinguard authenticates itself as a user of the server.
#[derive(Clone)]
pub enum UserIdentity {
    Anonymous,
    UserName {
        user: String,
        password: String,
    },
    /// An X.509 user certificate (DER or PEM) and its private key (PEM).
    Certificate {
        cert: PathBuf,
        key: PathBuf,
    },
}

impl std::fmt::Debug for UserIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserIdentity::Anonymous => f.write_str("Anonymous"),
            UserIdentity::UserName { user, .. } => write!(f, "UserName({user}, <password>)"),
            UserIdentity::Certificate { cert, .. } => write!(f, "Certificate({})", cert.display()),
        }
    }
}

/// One monitored node and the twin signal it feeds.
#[derive(Debug, Clone)]
pub struct Subscribe {
    pub signal: String,
    pub node: NodeRef,
    pub unit: String,
    pub sampling_ms: f64,
    /// Absolute deadband; changes smaller than this are not reported by the server.
    pub deadband: Option<f64>,
    pub queue_size: u32,
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub id: String,
    pub url: String,
    pub policy: Policy,
    pub mode: Mode,
    /// Security mode None is refused unless this is set; values then are untrusted.
    pub allow_security_none: bool,
    pub identity: UserIdentity,
    /// Trust list and this application's own certificate (created on first use).
    pub pki_dir: PathBuf,
    pub subscribe: Vec<Subscribe>,
    pub publishing_ms: u64,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Capacity of the channel to the core; past it values are counted as dropped.
    pub queue: usize,
}

impl SourceConfig {
    /// Defaults for everything but the endpoint, security and nodes.
    pub fn new(id: &str, url: &str, policy: Policy, mode: Mode, pki_dir: PathBuf) -> SourceConfig {
        SourceConfig {
            id: id.into(),
            url: url.into(),
            policy,
            mode,
            allow_security_none: false,
            identity: UserIdentity::Anonymous,
            pki_dir,
            subscribe: Vec::new(),
            publishing_ms: 100,
            retry_initial: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            queue: 65_536,
        }
    }

    /// `SignAndEncrypt/Basic256Sha256`, as provenance records it.
    pub fn security(&self) -> String {
        format!(
            "{:?}/{}",
            self.mode,
            match self.policy {
                Policy::None => "None",
                Policy::Basic256Sha256 => "Basic256Sha256",
                Policy::Aes128Sha256RsaOaep => "Aes128_Sha256_RsaOaep",
                Policy::Aes256Sha256RsaPss => "Aes256_Sha256_RsaPss",
            }
        )
    }

    fn insecure(&self) -> bool {
        self.mode == Mode::None || self.policy == Policy::None
    }
}

/// One data change.
#[derive(Debug, Clone, PartialEq)]
pub struct UaValue {
    pub signal: String,
    pub node: String,
    pub unit: String,
    /// The value as a number, when it is one.
    pub value: Option<f64>,
    pub good: bool,
    /// The status code's name (`Good`, `BadSensorFailure`, ...).
    pub status: String,
    pub source_ms: Option<i64>,
    pub server_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum UaEvent {
    Value(UaValue),
    /// The connection dropped; values until [`UaEvent::Restored`] are missing.
    Lost {
        reason: String,
    },
    /// Reconnected and the subscription is active again.
    Restored {
        new_session: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum UaError {
    #[error(
        "OPC UA source {source_id}: security mode None is refused; set allow_security_none = true to accept it (its values are then untrusted)"
    )]
    SecurityNoneRefused { source_id: String },
    #[error("OPC UA source {source_id}: cannot reach {url}: {message}")]
    Unreachable {
        source_id: String,
        url: String,
        message: String,
    },
    #[error(
        "OPC UA source {source_id}: {url} offers no endpoint with {wanted}; it offers: {offered}"
    )]
    NoMatchingEndpoint {
        source_id: String,
        url: String,
        wanted: String,
        offered: String,
    },
    #[error(
        "OPC UA source {source_id}: the server's certificate is not trusted: {subject}, thumbprint {thumbprint} (SHA-256 {sha256}). It was saved in {rejected}. If this is the server you expect, trust it with `twinguard pki trust {thumbprint}`"
    )]
    UntrustedServer {
        source_id: String,
        subject: String,
        thumbprint: String,
        sha256: String,
        rejected: String,
    },
    #[error("OPC UA source {source_id}: {message}")]
    Session { source_id: String, message: String },
    #[error("OPC UA source {source_id}: node {node}: {message}")]
    Node {
        source_id: String,
        node: String,
        message: String,
    },
}

/// Unix milliseconds from an OPC UA DateTime (100 ns ticks since 1601).
pub fn unix_ms(t: &opcua::types::DateTime) -> i64 {
    (t.checked_ticks() - 116_444_736_000_000_000) / 10_000
}

/// An OPC UA DateTime from Unix milliseconds.
pub fn ua_time(unix_ms: i64) -> opcua::types::DateTime {
    opcua::types::DateTime::from(unix_ms.saturating_mul(10_000) + 116_444_736_000_000_000)
}

fn to_f64(v: &Variant) -> Option<f64> {
    match v {
        Variant::Boolean(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => v.as_f64(),
    }
}

/// A live session with a server.
pub struct Connection {
    session: Arc<Session>,
    source_id: String,
    /// `SignAndEncrypt/Basic256Sha256` etc.
    pub security: String,
    /// SHA-256 fingerprint of the server certificate the channel was opened with.
    pub peer_certificate: Option<String>,
    /// True when the channel authenticates the server (Sign or SignAndEncrypt with a
    /// trusted certificate).
    pub authenticated: bool,
    /// Values the core's channel had no room for (counted, never silent).
    pub dropped: Arc<AtomicU64>,
    resolved: HashMap<String, NodeId>,
    task: tokio::task::JoinHandle<()>,
}

impl Connection {
    /// Connects, subscribes to every configured node and starts forwarding to `tx`.
    pub async fn connect(
        cfg: &SourceConfig,
        tx: mpsc::Sender<UaEvent>,
    ) -> Result<Connection, UaError> {
        let sid = cfg.id.clone();
        let session_err = |message: String| UaError::Session {
            source_id: sid.clone(),
            message,
        };
        if cfg.insecure() && !cfg.allow_security_none {
            return Err(UaError::SecurityNoneRefused {
                source_id: cfg.id.clone(),
            });
        }
        let mut client = builder(cfg)
            .client()
            .map_err(|e| session_err(format!("client configuration: {}", e.join("; "))))?;
        protect_private_key(cfg);

        let endpoints = client
            .get_server_endpoints_from_url(cfg.url.as_str())
            .await
            .map_err(|e| UaError::Unreachable {
                source_id: cfg.id.clone(),
                url: cfg.url.clone(),
                message: e.to_string(),
            })?;
        let want_policy = cfg.policy.stack();
        let want_mode = cfg.mode.stack();
        let Some(endpoint) = endpoints
            .iter()
            .find(|e| {
                e.security_mode == want_mode
                    && SecurityPolicy::from_uri(e.security_policy_uri.as_ref()) == want_policy
            })
            .cloned()
        else {
            let offered = endpoints
                .iter()
                .map(|e| {
                    format!(
                        "{:?}/{}",
                        e.security_mode,
                        SecurityPolicy::from_uri(e.security_policy_uri.as_ref()).to_str()
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Err(UaError::NoMatchingEndpoint {
                source_id: cfg.id.clone(),
                url: cfg.url.clone(),
                wanted: cfg.security(),
                offered,
            });
        };
        // Connect to the URL we were given (servers often advertise their host name).
        let endpoint = EndpointDescription {
            endpoint_url: cfg.url.as_str().into(),
            ..endpoint
        };
        let server_der = endpoint
            .server_certificate
            .value
            .clone()
            .unwrap_or_default();
        let peer_certificate =
            (!server_der.is_empty()).then(|| pki::sha256_fingerprint(&server_der));
        if !cfg.insecure() {
            check_trusted(cfg, &server_der)?;
        }

        let identity = match &cfg.identity {
            UserIdentity::Anonymous => IdentityToken::Anonymous,
            UserIdentity::UserName { user, password } => {
                IdentityToken::new_user_name(user.clone(), password.clone())
            }
            UserIdentity::Certificate { cert, key } => IdentityToken::new_x509_path(cert, key)
                .map_err(|e| {
                    session_err(format!(
                        "cannot load the user certificate {} / key {}: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?,
        };
        let (session, event_loop) = client
            .connect_to_endpoint_directly(endpoint, identity)
            .map_err(|e| session_err(format!("cannot open a session: {e}")))?;
        let mut events = Box::pin(event_loop.enter());
        // The first connection must succeed; afterwards the stack retries with backoff.
        loop {
            match events.next().await {
                Some(Ok(SessionPollResult::Reconnected(_))) => break,
                Some(Ok(SessionPollResult::ReconnectFailed(code))) => {
                    return Err(session_err(explain_status(code)));
                }
                Some(Ok(_)) => {}
                Some(Err(code)) => return Err(session_err(explain_status(code))),
                None => return Err(session_err("the session ended while connecting".into())),
            }
        }
        let lost_tx = tx.clone();
        let id = cfg.id.clone();
        let kick = session.clone();
        let task = tokio::spawn(async move {
            while let Some(r) = events.next().await {
                let event = match r {
                    Ok(SessionPollResult::ConnectionLost(code)) => UaEvent::Lost {
                        reason: explain_status(code),
                    },
                    Ok(SessionPollResult::Reconnected(mode)) => {
                        // async-opcua 0.19 re-creates the subscription while reconnecting,
                        // before the new publish loop exists; that loop then never learns
                        // there is a subscription to publish for. Trigger it once it runs.
                        let kick = kick.clone();
                        tokio::spawn(async move {
                            for ms in [100, 500, 2000] {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                                kick.trigger_publish_now();
                            }
                        });
                        UaEvent::Restored {
                            new_session: matches!(
                                mode,
                                opcua::client::SessionConnectMode::NewSession(_)
                            ),
                        }
                    }
                    Ok(SessionPollResult::ReconnectFailed(code)) => {
                        tracing::warn!(source = %id, status = %code, "OPC UA reconnect failed; retrying");
                        continue;
                    }
                    Ok(_) => continue,
                    Err(code) => UaEvent::Lost {
                        reason: format!("session ended: {}", explain_status(code)),
                    },
                };
                if lost_tx.send(event).await.is_err() {
                    return;
                }
            }
        });

        let mut conn = Connection {
            session,
            source_id: cfg.id.clone(),
            security: cfg.security(),
            peer_certificate,
            authenticated: !cfg.insecure(),
            dropped: Arc::new(AtomicU64::new(0)),
            resolved: HashMap::new(),
            task,
        };
        conn.subscribe(cfg, tx).await?;
        Ok(conn)
    }

    async fn subscribe(
        &mut self,
        cfg: &SourceConfig,
        tx: mpsc::Sender<UaEvent>,
    ) -> Result<(), UaError> {
        let mut by_node: HashMap<NodeId, (String, String)> = HashMap::new();
        let mut requests = Vec::new();
        for s in &cfg.subscribe {
            let node = self.resolve(&s.node).await?;
            by_node.insert(node.clone(), (s.signal.clone(), s.unit.clone()));
            // Without a deadband every new sample is reported, even an unchanged value with
            // a new timestamp: a steady signal must not look like a gap.
            let filter = ExtensionObject::from_message(match s.deadband {
                Some(d) => DataChangeFilter {
                    trigger: DataChangeTrigger::StatusValue,
                    deadband_type: DeadbandType::Absolute as u32,
                    deadband_value: d,
                },
                None => DataChangeFilter {
                    trigger: DataChangeTrigger::StatusValueTimestamp,
                    deadband_type: DeadbandType::None as u32,
                    deadband_value: 0.0,
                },
            });
            requests.push(MonitoredItemCreateRequest {
                item_to_monitor: ReadValueId {
                    node_id: node,
                    attribute_id: AttributeId::Value as u32,
                    ..Default::default()
                },
                monitoring_mode: MonitoringMode::Reporting,
                requested_parameters: MonitoringParameters {
                    client_handle: 0,
                    sampling_interval: s.sampling_ms,
                    filter,
                    queue_size: s.queue_size,
                    discard_oldest: true,
                },
            });
        }
        if requests.is_empty() {
            return Ok(());
        }
        let dropped = self.dropped.clone();
        let callback = DataChangeCallback::new(move |dv: DataValue, item: &MonitoredItem| {
            let node = &item.item_to_monitor().node_id;
            let Some((signal, unit)) = by_node.get(node) else {
                return;
            };
            let status = dv.status.unwrap_or(StatusCode::Good);
            // Not a sample: the server has no value for the node yet (it says so, or sends
            // an empty value, as async-opcua does for a variable that was never set).
            if status == StatusCode::BadWaitingForInitialData
                || dv
                    .value
                    .as_ref()
                    .is_none_or(|v| matches!(v, Variant::Empty))
            {
                tracing::debug!(%node, "no value yet");
                return;
            }
            let value = UaValue {
                signal: signal.clone(),
                node: node.to_string(),
                unit: unit.clone(),
                value: dv.value.as_ref().and_then(to_f64),
                good: status.is_good(),
                status: status.to_string(),
                source_ms: dv.source_timestamp.as_ref().map(unix_ms),
                server_ms: dv.server_timestamp.as_ref().map(unix_ms),
            };
            if tx.try_send(UaEvent::Value(value)).is_err() {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
        });
        let sub = self
            .session
            .create_subscription(
                Duration::from_millis(cfg.publishing_ms),
                60,
                10,
                0,
                0,
                true,
                callback,
            )
            .await
            .map_err(|e| UaError::Session {
                source_id: self.source_id.clone(),
                message: format!("cannot create the subscription: {e}"),
            })?;
        let results = self
            .session
            .create_monitored_items(sub, TimestampsToReturn::Both, requests)
            .await
            .map_err(|e| UaError::Session {
                source_id: self.source_id.clone(),
                message: format!("cannot create monitored items: {e}"),
            })?;
        for (r, s) in results.iter().zip(&cfg.subscribe) {
            if !r.result.status_code.is_good() {
                return Err(UaError::Node {
                    source_id: self.source_id.clone(),
                    node: s.node.to_string(),
                    message: format!("cannot monitor it: {}", r.result.status_code),
                });
            }
        }
        Ok(())
    }

    /// The NodeId for a configured node; browse paths are translated by the server.
    pub async fn resolve(&mut self, node: &NodeRef) -> Result<NodeId, UaError> {
        let key = node.to_string();
        if let Some(id) = self.resolved.get(&key) {
            return Ok(id.clone());
        }
        let node_err = |message: String| UaError::Node {
            source_id: self.source_id.clone(),
            node: key.clone(),
            message,
        };
        let id = match node {
            NodeRef::Id(s) => s.parse::<NodeId>().map_err(|_| {
                node_err("not a NodeId (expected e.g. ns=2;s=name or ns=2;i=42)".into())
            })?,
            NodeRef::Path(p) => {
                let relative_path = RelativePath::try_from(p.as_str())
                    .map_err(|e| node_err(format!("not a browse path: {e:?}")))?;
                let r = self
                    .session
                    .translate_browse_paths_to_node_ids(&[BrowsePath {
                        starting_node: ObjectId::ObjectsFolder.into(),
                        relative_path,
                    }])
                    .await
                    .map_err(|e| node_err(format!("cannot translate the browse path: {e}")))?;
                let first = r
                    .into_iter()
                    .next()
                    .ok_or_else(|| node_err("no result".into()))?;
                if !first.status_code.is_good() {
                    return Err(node_err(format!(
                        "browse path not found: {}",
                        first.status_code
                    )));
                }
                first
                    .targets
                    .and_then(|t| t.into_iter().next())
                    .map(|t| t.target_id.node_id)
                    .ok_or_else(|| node_err("browse path has no target".into()))?
            }
        };
        self.resolved.insert(key, id.clone());
        Ok(id)
    }

    /// Writes a Double to a node's Value attribute.
    pub async fn write(&mut self, node: &NodeRef, value: f64) -> Result<(), UaError> {
        let id = self.resolve(node).await?;
        let r = self
            .session
            .write(&[WriteValue {
                node_id: id,
                attribute_id: AttributeId::Value as u32,
                index_range: Default::default(),
                value: DataValue::new_now(value),
            }])
            .await
            .map_err(|e| UaError::Node {
                source_id: self.source_id.clone(),
                node: node.to_string(),
                message: format!("write failed: {e}"),
            })?;
        match r.first() {
            Some(s) if s.is_good() => Ok(()),
            other => Err(UaError::Node {
                source_id: self.source_id.clone(),
                node: node.to_string(),
                message: format!(
                    "the server refused the write: {}",
                    other.map_or("no result".into(), |s| s.to_string())
                ),
            }),
        }
    }

    /// Calls a method on an object with Double arguments.
    pub async fn call(
        &mut self,
        object: &NodeRef,
        method: &NodeRef,
        args: &[f64],
    ) -> Result<(), UaError> {
        let object_id = self.resolve(object).await?;
        let method_id = self.resolve(method).await?;
        let r = self
            .session
            .call_one(CallMethodRequest {
                object_id,
                method_id,
                input_arguments: (!args.is_empty())
                    .then(|| args.iter().map(|a| Variant::Double(*a)).collect()),
            })
            .await
            .map_err(|e| UaError::Node {
                source_id: self.source_id.clone(),
                node: method.to_string(),
                message: format!("call failed: {e}"),
            })?;
        if r.status_code.is_good() {
            Ok(())
        } else {
            Err(UaError::Node {
                source_id: self.source_id.clone(),
                node: method.to_string(),
                message: format!("the server refused the call: {}", r.status_code),
            })
        }
    }

    /// Reads a node's current value as a number.
    pub async fn read(&mut self, node: &NodeRef) -> Result<Option<f64>, UaError> {
        let id = self.resolve(node).await?;
        let r = self
            .session
            .read(&[ReadValueId::from(id)], TimestampsToReturn::Both, 0.0)
            .await
            .map_err(|e| UaError::Node {
                source_id: self.source_id.clone(),
                node: node.to_string(),
                message: format!("read failed: {e}"),
            })?;
        Ok(r.first().and_then(|d| d.value.as_ref()).and_then(to_f64))
    }

    /// Closes the session.
    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.session.disconnect()).await;
        self.task.abort();
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn builder(cfg: &SourceConfig) -> ClientBuilder {
    ClientBuilder::new()
        .application_name(format!("twinguard ({})", cfg.id))
        .application_uri(format!("urn:twinguard:{}", cfg.id))
        .product_uri("urn:twinguard")
        .pki_dir(cfg.pki_dir.clone())
        .create_sample_keypair(true)
        .trust_server_certs(false)
        .verify_server_certs(true)
        .session_retry_initial(cfg.retry_initial)
        .session_retry_max(cfg.retry_max)
        .session_retry_limit(-1)
        .keep_alive_interval(Duration::from_secs(2))
        .max_failed_keep_alive_count(3)
        .recreate_subscriptions(true)
        .session_timeout(60_000)
}

/// The private key the stack generated is readable by its owner only.
fn protect_private_key(cfg: &SourceConfig) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = cfg.pki_dir.join("private").join("private.pem");
        if key.exists() {
            let _ = std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600));
        }
    }
}

/// twinguard's application instance certificate for this source (DER), created with its
/// private key on first use. Give it to the server's administrator to trust.
pub fn own_certificate(cfg: &SourceConfig) -> Result<Vec<u8>, UaError> {
    builder(cfg).client().map_err(|e| UaError::Session {
        source_id: cfg.id.clone(),
        message: format!("client configuration: {}", e.join("; ")),
    })?;
    protect_private_key(cfg);
    pki::own_certificate(&cfg.pki_dir).map_err(|e| UaError::Session {
        source_id: cfg.id.clone(),
        message: e.to_string(),
    })
}

/// Refuses a server certificate that is not in `trusted/`, saving it in `rejected/` so that
/// an operator can inspect and trust it.
fn check_trusted(cfg: &SourceConfig, der: &[u8]) -> Result<(), UaError> {
    let sid = cfg.id.clone();
    let cert = X509::from_der(der).map_err(|e| UaError::Session {
        source_id: sid.clone(),
        message: format!("the server sent no valid certificate: {e}"),
    })?;
    let name = CertificateStore::cert_file_name(&cert);
    if cfg.pki_dir.join("trusted").join(&name).exists() {
        return Ok(());
    }
    let rejected = cfg.pki_dir.join("rejected");
    let _ = std::fs::create_dir_all(&rejected);
    let path = rejected.join(&name);
    if let Err(e) = std::fs::write(&path, der) {
        tracing::warn!(error = %e, path = %path.display(), "cannot save the rejected certificate");
    }
    let entry = pki::describe(der, pki::CertState::Rejected, path.clone()).map_err(|e| {
        UaError::Session {
            source_id: sid.clone(),
            message: e.to_string(),
        }
    })?;
    Err(UaError::UntrustedServer {
        source_id: sid,
        subject: entry.subject,
        thumbprint: entry.thumbprint,
        sha256: entry.sha256,
        rejected: path.display().to_string(),
    })
}

fn explain_status(code: StatusCode) -> String {
    let hint = if code == StatusCode::BadIdentityTokenRejected
        || code == StatusCode::BadUserAccessDenied
    {
        " (the server refused the user identity)"
    } else if code == StatusCode::BadCertificateUntrusted
        || code == StatusCode::BadSecurityChecksFailed
    {
        " (the server does not trust twinguard's certificate: trust it on the server)"
    } else {
        ""
    };
    format!("{code}{hint}")
}
