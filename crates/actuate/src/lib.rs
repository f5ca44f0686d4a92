//! Actuation: the only stage that talks to the plant. It accepts nothing but a guard's
//! [`Approved`] command, signs it with twinguard's actuation key and sends it.
//!
//! [`CommandSink`] is the seam for other transports (OPC UA Write/Call later);
//! [`MqttSink`] publishes signed `TGC1` envelopes to the asset's command topic.

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use frames::{CommandBody, Kind, encode, to_body};
use guard::Approved;
use ingest::mqtt::Publisher;
use plant_model::{Plant, PlantCommand};
use serde::Serialize;

/// The signer id of twinguard's actuation key in command envelopes.
pub const SIGNER: &str = "twinguard";

#[derive(Debug, thiserror::Error)]
pub enum ActuateError {
    #[error("cannot encode command {id}: {message}")]
    Encode { id: String, message: String },
    #[error("cannot send command {id} to {topic}: {message}")]
    Send {
        id: String,
        topic: String,
        message: String,
    },
}

/// What was sent, for the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct Sent {
    pub command_id: String,
    pub topic: String,
    pub seq: u64,
    pub asset: String,
    pub command: PlantCommand,
    pub origin: String,
    pub approved_by: Vec<String>,
}

impl Sent {
    /// What was sent for `approved`, on `topic` (or node), as message `seq`.
    pub fn of(approved: &Approved, topic: String, seq: u64) -> Sent {
        let c = approved.command();
        Sent {
            command_id: c.id.clone(),
            topic,
            seq,
            asset: c.asset.clone(),
            command: c.command.clone(),
            origin: c.origin.clone(),
            approved_by: c.approved_by.clone(),
        }
    }
}

pub trait CommandSink: Send {
    fn send(&mut self, approved: Approved, now_ms: i64) -> Result<Sent, ActuateError>;
}

/// Builds the signed envelope for an approved command.
pub fn envelope(
    plant: &Plant,
    key: &SigningKey,
    approved: &Approved,
    seq: u64,
    now_ms: i64,
) -> Result<(String, Vec<u8>), ActuateError> {
    let c = approved.command();
    let topic = plant.command_topic(&c.asset);
    let body = to_body(&CommandBody {
        seq,
        ts_ms: now_ms,
        command_id: c.id.clone(),
        asset: c.asset.clone(),
        command: c.command.clone(),
    });
    let bytes = encode(Kind::Command, &topic, SIGNER, &body, Some(key)).map_err(|e| {
        ActuateError::Encode {
            id: c.id.clone(),
            message: e.to_string(),
        }
    })?;
    Ok((topic, bytes))
}

/// Publishes signed commands over MQTT 3.1.1 or 5 (QoS 1).
pub struct MqttSink {
    plant: Arc<Plant>,
    client: Publisher,
    key: SigningKey,
    seq: u64,
}

impl MqttSink {
    /// `client` must have its event loop polled elsewhere. `first_seq` continues the
    /// sequence across restarts so that the plant's replay window accepts new commands.
    pub fn new(plant: Arc<Plant>, client: Publisher, key: SigningKey, first_seq: u64) -> MqttSink {
        MqttSink {
            plant,
            client,
            key,
            seq: first_seq,
        }
    }
}

impl CommandSink for MqttSink {
    fn send(&mut self, approved: Approved, now_ms: i64) -> Result<Sent, ActuateError> {
        self.seq += 1;
        let (topic, bytes) = envelope(&self.plant, &self.key, &approved, self.seq, now_ms)?;
        let c = approved.command();
        self.client
            .try_publish(topic.clone(), bytes)
            .map_err(|message| ActuateError::Send {
                id: c.id.clone(),
                topic: topic.clone(),
                message,
            })?;
        Ok(Sent::of(&approved, topic, self.seq))
    }
}

/// Where each command goes on an OPC UA server.
#[derive(Debug, Clone, Default)]
pub struct OpcUaTargets {
    /// Setpoint id → the node its value is written to.
    pub setpoints: std::collections::BTreeMap<String, opcua_link::NodeRef>,
    /// `stop_line`, `start_line`, `maintenance` → (object, method) to call.
    pub calls: std::collections::BTreeMap<String, (opcua_link::NodeRef, opcua_link::NodeRef)>,
}

/// Sends approved commands as OPC UA Write (setpoints) and Call (line stop, start,
/// maintenance) over the source's authenticated session. The server authenticates
/// twinguard by its application certificate and user identity; it sees no `TGC1` envelope.
pub struct OpcUaSink {
    conn: opcua_link::Connection,
    targets: OpcUaTargets,
    /// Setpoint → safe value, for a line stop without a stop method.
    safe: std::collections::BTreeMap<String, f64>,
    seq: u64,
}

impl OpcUaSink {
    /// A line stop calls the configured `stop_line` method; without one it writes every
    /// configured setpoint's safe value from the plant file.
    pub fn new(conn: opcua_link::Connection, targets: OpcUaTargets, plant: &Plant) -> OpcUaSink {
        OpcUaSink {
            conn,
            targets,
            safe: plant.safe_state(),
            seq: 0,
        }
    }
}

fn command_name(c: &PlantCommand) -> &'static str {
    match c {
        PlantCommand::SetSetpoint { .. } => "set_setpoint",
        PlantCommand::StopLine => "stop_line",
        PlantCommand::StartLine => "start_line",
        PlantCommand::Maintenance => "maintenance",
    }
}

impl CommandSink for OpcUaSink {
    fn send(&mut self, approved: Approved, _now_ms: i64) -> Result<Sent, ActuateError> {
        let c = approved.command();
        let send_err = |topic: String, message: String| ActuateError::Send {
            id: c.id.clone(),
            topic,
            message,
        };
        // The core is synchronous; the session is async. Block this worker only (the
        // runtime keeps the session's event loop on the others).
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|e| send_err("opcua".into(), e.to_string()))?;
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return Err(send_err(
                "opcua".into(),
                "OPC UA actuation needs the multi-threaded runtime".into(),
            ));
        }
        let (topic, result) = match &c.command {
            PlantCommand::SetSetpoint { setpoint, value } => {
                let node = self.targets.setpoints.get(setpoint).ok_or_else(|| {
                    send_err(
                        setpoint.clone(),
                        format!("no OPC UA node is configured for setpoint {setpoint}"),
                    )
                })?;
                let conn = &mut self.conn;
                let r = tokio::task::block_in_place(|| handle.block_on(conn.write(node, *value)));
                (node.to_string(), r)
            }
            PlantCommand::StopLine if !self.targets.calls.contains_key("stop_line") => {
                let writes: Vec<(opcua_link::NodeRef, f64)> = self
                    .targets
                    .setpoints
                    .iter()
                    .filter_map(|(sp, node)| self.safe.get(sp).map(|v| (node.clone(), *v)))
                    .collect();
                if writes.is_empty() {
                    return Err(send_err(
                        "stop_line".into(),
                        "no stop_line method and no setpoint nodes are configured".into(),
                    ));
                }
                let conn = &mut self.conn;
                let r = tokio::task::block_in_place(|| {
                    handle.block_on(async {
                        for (node, v) in &writes {
                            conn.write(node, *v).await?;
                        }
                        Ok::<(), opcua_link::UaError>(())
                    })
                });
                ("safe state".to_string(), r)
            }
            other => {
                let name = command_name(other);
                let (object, method) = self.targets.calls.get(name).ok_or_else(|| {
                    send_err(
                        name.into(),
                        format!("no OPC UA method is configured for {name}"),
                    )
                })?;
                let conn = &mut self.conn;
                let r =
                    tokio::task::block_in_place(|| handle.block_on(conn.call(object, method, &[])));
                (method.to_string(), r)
            }
        };
        result.map_err(|e| send_err(topic.clone(), e.to_string()))?;
        self.seq += 1;
        Ok(Sent::of(&approved, topic, self.seq))
    }
}
