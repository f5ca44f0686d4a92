//! An OPC UA server that exposes a plant: one object per asset under
//! `Objects/<plant id>`, a read-only Double variable per signal (NodeId `ns=<ns>;s=<signal
//! id>`), a writable Double per setpoint, and `StopLine`/`StartLine` methods on the plant
//! object. Only endpoints with security are offered (Basic256Sha256 and
//! Aes256_Sha256_RsaPss, Sign and SignAndEncrypt) unless `allow_none` is set; clients must
//! present a trusted application certificate and a user name and password. Writes and
//! calls come out as [`PlantWrite`] on a channel; the plant applies them.

use std::path::PathBuf;
use std::sync::Arc;

use opcua::crypto::SecurityPolicy;
use opcua::server::address_space::{AccessLevel, MethodBuilder, ObjectBuilder, VariableBuilder};
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{SimpleNodeManager, simple_node_manager};
use opcua::server::{ServerBuilder, ServerHandle, ServerUserToken};
use opcua::types::{
    DataTypeId, DataValue, MessageSecurityMode, NodeId, ObjectId, QualifiedName, StatusCode,
    Variant,
};
use plant_model::{Plant, PlantCommand};
use tokio::sync::mpsc;

use crate::client::ua_time;

/// The namespace URI of the plant's nodes.
pub const NAMESPACE: &str = "urn:twinguard:plant";

#[derive(Debug, Clone)]
pub struct PlantServerConfig {
    pub host: String,
    /// 0 for any free port.
    pub port: u16,
    pub pki_dir: PathBuf,
    /// User names and passwords allowed to connect.
    pub users: Vec<(String, String)>,
    /// Users that authenticate with an X.509 user certificate (name, DER certificate file).
    pub certificate_users: Vec<(String, PathBuf)>,
    /// Also offer security mode None (for tests of the refusal path).
    pub allow_none: bool,
}

/// A change requested by a client.
#[derive(Debug, Clone, PartialEq)]
pub struct PlantWrite {
    pub command: PlantCommand,
}

pub struct PlantServer {
    handle: ServerHandle,
    nm: Arc<SimpleNodeManager>,
    ns: u16,
    signals: Vec<NodeId>,
    setpoints: Vec<(String, NodeId)>,
    pub url: String,
    pub port: u16,
    pki_dir: PathBuf,
}

impl PlantServer {
    /// Starts serving on `host` (a free port) and returns once it listens.
    pub async fn start(
        plant: Arc<Plant>,
        cfg: PlantServerConfig,
        writes: mpsc::UnboundedSender<PlantWrite>,
    ) -> Result<PlantServer, String> {
        let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", cfg.host))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let url = format!("opc.tcp://{}:{port}/", cfg.host);
        let user_ids: Vec<String> = cfg
            .users
            .iter()
            .map(|(u, _)| format!("user-{u}"))
            .chain(
                cfg.certificate_users
                    .iter()
                    .map(|(u, _)| format!("x509-{u}")),
            )
            .collect();
        let ids: Vec<&str> = user_ids.iter().map(String::as_str).collect();
        let mut builder = ServerBuilder::new()
            .application_name(format!("{} (twinguard reference plant)", plant.plant.id))
            .application_uri(format!("urn:twinguard:plant:{}", plant.plant.id))
            .product_uri("urn:twinguard:plant")
            .create_sample_keypair(true)
            .trust_client_certs(false)
            .host(cfg.host.clone())
            .port(port)
            .pki_dir(cfg.pki_dir.clone())
            .discovery_urls(vec![url.clone()])
            .with_node_manager(simple_node_manager(
                NamespaceMetadata {
                    namespace_uri: NAMESPACE.into(),
                    ..Default::default()
                },
                "plant",
            ));
        for (user, cert) in &cfg.certificate_users {
            builder = builder.add_user_token(
                format!("x509-{user}"),
                ServerUserToken::x509(user.as_str(), cert),
            );
        }
        for (user, pass) in &cfg.users {
            builder = builder.add_user_token(
                format!("user-{user}"),
                ServerUserToken::user_pass(user.as_str(), pass.as_str()),
            );
        }
        let endpoints = [
            (
                "b256_se",
                SecurityPolicy::Basic256Sha256,
                MessageSecurityMode::SignAndEncrypt,
            ),
            (
                "b256_s",
                SecurityPolicy::Basic256Sha256,
                MessageSecurityMode::Sign,
            ),
            (
                "pss_se",
                SecurityPolicy::Aes256Sha256RsaPss,
                MessageSecurityMode::SignAndEncrypt,
            ),
            (
                "pss_s",
                SecurityPolicy::Aes256Sha256RsaPss,
                MessageSecurityMode::Sign,
            ),
        ];
        for (id, policy, mode) in endpoints {
            builder = builder.add_endpoint(id, ("/", policy, mode, &ids[..]));
        }
        if cfg.allow_none {
            builder = builder.add_endpoint(
                "none",
                (
                    "/",
                    SecurityPolicy::None,
                    MessageSecurityMode::None,
                    &ids[..],
                ),
            );
        }
        // The plant publishes a burst of samples per step (simulated time runs fast):
        // queues large enough to hold them.
        let limits = builder.limits_mut();
        limits.subscriptions.max_monitored_item_queue_size = 1_000;
        limits.subscriptions.max_queued_notifications = 100_000;
        limits.subscriptions.min_sampling_interval_ms = 0.0;
        limits.subscriptions.min_publishing_interval_ms = 20.0;
        let (server, handle) = builder
            .build()
            .map_err(|e| format!("cannot build the OPC UA server: {e}"))?;
        let nm = handle
            .node_managers()
            .get_of_type::<SimpleNodeManager>()
            .ok_or("the plant node manager is missing")?;
        let ns = handle
            .get_namespace_index(NAMESPACE)
            .ok_or("the plant namespace is missing")?;

        let plant_node = NodeId::new(ns, plant.plant.id.clone());
        let mut signals = Vec::new();
        let mut setpoints = Vec::new();
        {
            let mut space = nm.address_space().write();
            ObjectBuilder::new(
                &plant_node,
                QualifiedName::new(ns, plant.plant.id.as_str()),
                plant.plant.id.as_str(),
            )
            .organized_by(ObjectId::ObjectsFolder)
            .insert(&mut *space);
            for a in &plant.assets {
                let asset_node = NodeId::new(ns, a.id.clone());
                ObjectBuilder::new(
                    &asset_node,
                    QualifiedName::new(ns, a.id.as_str()),
                    a.id.as_str(),
                )
                .component_of(plant_node.clone())
                .insert(&mut *space);
            }
            for s in &plant.signals {
                let id = NodeId::new(ns, s.id.clone());
                VariableBuilder::new(&id, QualifiedName::new(ns, s.id.as_str()), s.id.as_str())
                    .data_type(DataTypeId::Double)
                    .value(0.0f64)
                    .access_level(AccessLevel::CURRENT_READ)
                    .user_access_level(AccessLevel::CURRENT_READ)
                    .component_of(NodeId::new(ns, s.asset.clone()))
                    .insert(&mut *space);
                signals.push(id);
            }
            for sp in &plant.setpoints {
                let id = NodeId::new(ns, sp.id.clone());
                VariableBuilder::new(&id, QualifiedName::new(ns, sp.id.as_str()), sp.id.as_str())
                    .data_type(DataTypeId::Double)
                    .value(sp.initial)
                    .access_level(AccessLevel::CURRENT_READ | AccessLevel::CURRENT_WRITE)
                    .user_access_level(AccessLevel::CURRENT_READ | AccessLevel::CURRENT_WRITE)
                    .component_of(NodeId::new(ns, sp.asset.clone()))
                    .insert(&mut *space);
                setpoints.push((sp.id.clone(), id));
            }
            for name in ["StopLine", "StartLine", "Maintenance"] {
                let id = NodeId::new(ns, format!("{}.{name}", plant.plant.id));
                let in_id = NodeId::new(ns, format!("{}.{name}.in", plant.plant.id));
                let out_id = NodeId::new(ns, format!("{}.{name}.out", plant.plant.id));
                MethodBuilder::new(&id, QualifiedName::new(ns, name), name)
                    .component_of(plant_node.clone())
                    .input_args(&mut *space, &in_id, &[])
                    .output_args(&mut *space, &out_id, &[])
                    .insert(&mut *space);
            }
        }
        // No data yet: say so (OPC UA's way) rather than show a made-up 0 with a timestamp.
        nm.set_values(
            handle.subscriptions(),
            signals.iter().map(|id| {
                (
                    id,
                    None,
                    DataValue {
                        value: None,
                        status: Some(StatusCode::BadWaitingForInitialData),
                        ..DataValue::null()
                    },
                )
            }),
        )
        .map_err(|e| format!("cannot initialise the plant's nodes: {e}"))?;
        for (sp_id, node) in &setpoints {
            let tx = writes.clone();
            let sp = plant.setpoint(sp_id).cloned();
            nm.inner()
                .add_write_callback(node.clone(), move |dv: DataValue, _range| {
                    let Some(sp) = &sp else {
                        return StatusCode::BadNodeIdUnknown;
                    };
                    let Some(value) = dv.value.as_ref().and_then(Variant::as_f64) else {
                        return StatusCode::BadTypeMismatch;
                    };
                    if !(value.is_finite()
                        && (value >= sp.min && value <= sp.max || value == sp.safe))
                    {
                        return StatusCode::BadOutOfRange;
                    }
                    match tx.send(PlantWrite {
                        command: PlantCommand::SetSetpoint {
                            setpoint: sp.id.clone(),
                            value,
                        },
                    }) {
                        Ok(()) => StatusCode::Good,
                        Err(_) => StatusCode::BadServerHalted,
                    }
                });
        }
        for (name, command) in [
            ("StopLine", PlantCommand::StopLine),
            ("StartLine", PlantCommand::StartLine),
            ("Maintenance", PlantCommand::Maintenance),
        ] {
            let tx = writes.clone();
            let id = NodeId::new(ns, format!("{}.{name}", plant.plant.id));
            nm.inner().add_method_callback(id, move |_args| {
                tx.send(PlantWrite {
                    command: command.clone(),
                })
                .map(|()| Vec::new())
                .map_err(|_| StatusCode::BadServerHalted)
            });
        }
        tokio::spawn(async move {
            if let Err(e) = server.run_with(listener).await {
                tracing::error!(error = %e, "the plant's OPC UA server stopped");
            }
        });
        Ok(PlantServer {
            handle,
            nm,
            ns,
            signals,
            setpoints,
            url,
            port,
            pki_dir: cfg.pki_dir,
        })
    }

    /// The namespace index of the plant's nodes.
    pub fn namespace(&self) -> u16 {
        self.ns
    }

    /// Publishes one sample per signal (in the plant file's order) at `t_ms`.
    pub fn publish(&self, t_ms: i64, values: &[f64]) -> Result<(), String> {
        let t = ua_time(t_ms);
        self.set(self.signals.iter().zip(values).map(|(id, v)| (id, *v)), t)
    }

    /// Shows the plant's current setpoint values (after a write or a stop), by setpoint id.
    pub fn show_setpoints(
        &self,
        t_ms: i64,
        value: impl Fn(&str) -> Option<f64>,
    ) -> Result<(), String> {
        let t = ua_time(t_ms);
        self.set(
            self.setpoints
                .iter()
                .filter_map(|(sp, id)| value(sp).map(|v| (id, v))),
            t,
        )
    }

    fn set<'a>(
        &self,
        values: impl Iterator<Item = (&'a NodeId, f64)>,
        t: opcua::types::DateTime,
    ) -> Result<(), String> {
        let updates = values.map(|(id, v)| {
            (
                id,
                None,
                DataValue {
                    value: Some(Variant::Double(v)),
                    status: Some(StatusCode::Good),
                    source_timestamp: Some(t),
                    source_picoseconds: None,
                    server_timestamp: Some(t),
                    server_picoseconds: None,
                },
            )
        });
        self.nm
            .set_values(self.handle.subscriptions(), updates)
            .map_err(|e| format!("cannot set values: {e}"))
    }

    /// The server's own application instance certificate (DER).
    pub fn certificate(&self) -> Result<Vec<u8>, crate::pki::PkiError> {
        crate::pki::own_certificate(&self.pki_dir)
    }

    /// Stops serving.
    pub fn stop(&self) {
        self.handle.cancel();
    }
}

impl Drop for PlantServer {
    fn drop(&mut self) {
        self.handle.cancel();
    }
}
