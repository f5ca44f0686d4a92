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

/// One OPC UA server twinguard acts on: the session and where each command goes on it.
pub struct OpcUaLink {
    /// The source's id, to name the server in records and errors.
    pub source: String,
    pub conn: opcua_link::Connection,
    pub targets: OpcUaTargets,
}

/// Sends approved commands as OPC UA Write (setpoints) and Call (line stop, start,
/// maintenance) over the sources' authenticated sessions. The servers authenticate
/// twinguard by its application certificate and user identity; they see no `TGC1`
/// envelope. A setpoint is written on the server configured for it; a line stop, start or
/// maintenance goes to every server configured for it (a stop without a stop method writes
/// that server's setpoints' safe values).
pub struct OpcUaSink {
    links: Vec<OpcUaLink>,
    /// Setpoint → safe value, for a line stop without a stop method.
    safe: std::collections::BTreeMap<String, f64>,
    seq: u64,
}

/// What one server is asked to do for a command.
#[derive(Debug, PartialEq)]
enum UaAction {
    Write(Vec<(opcua_link::NodeRef, f64)>),
    Call(opcua_link::NodeRef, opcua_link::NodeRef),
}

impl OpcUaSink {
    pub fn new(links: Vec<OpcUaLink>, plant: &Plant) -> OpcUaSink {
        OpcUaSink {
            links,
            safe: plant.safe_state(),
            seq: 0,
        }
    }
}

/// Which server (by index in `targets`) does what for `command`; an error (what, why)
/// names what is not configured.
fn plan(
    targets: &[&OpcUaTargets],
    safe: &std::collections::BTreeMap<String, f64>,
    command: &PlantCommand,
) -> Result<Vec<(usize, UaAction)>, (String, String)> {
    let plan: Vec<(usize, UaAction)> = match command {
        PlantCommand::SetSetpoint { setpoint, value } => targets
            .iter()
            .enumerate()
            .find_map(|(i, t)| {
                let node = t.setpoints.get(setpoint)?;
                Some((i, UaAction::Write(vec![(node.clone(), *value)])))
            })
            .into_iter()
            .collect(),
        PlantCommand::StopLine => targets
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match t.calls.get("stop_line") {
                Some((object, method)) => Some((i, UaAction::Call(object.clone(), method.clone()))),
                None => {
                    let writes: Vec<(opcua_link::NodeRef, f64)> = t
                        .setpoints
                        .iter()
                        .filter_map(|(sp, node)| safe.get(sp).map(|v| (node.clone(), *v)))
                        .collect();
                    (!writes.is_empty()).then_some((i, UaAction::Write(writes)))
                }
            })
            .collect(),
        PlantCommand::TakeOrder { order, .. } => {
            return Err((
                "take_order".into(),
                format!(
                    "order {order}: orders move between lines through the site's order book, not over OPC UA"
                ),
            ));
        }
        other => {
            let name = command_name(other);
            targets
                .iter()
                .enumerate()
                .filter_map(|(i, t)| {
                    let (object, method) = t.calls.get(name)?;
                    Some((i, UaAction::Call(object.clone(), method.clone())))
                })
                .collect()
        }
    };
    if plan.is_empty() {
        return Err(match command {
            PlantCommand::SetSetpoint { setpoint, .. } => (
                setpoint.clone(),
                format!("no OPC UA node is configured for setpoint {setpoint}"),
            ),
            PlantCommand::StopLine => (
                "stop_line".into(),
                "no stop_line method and no setpoint nodes are configured".into(),
            ),
            other => {
                let name = command_name(other);
                (
                    name.into(),
                    format!("no OPC UA method is configured for {name}"),
                )
            }
        });
    }
    Ok(plan)
}

fn command_name(c: &PlantCommand) -> &'static str {
    match c {
        PlantCommand::SetSetpoint { .. } => "set_setpoint",
        PlantCommand::StopLine => "stop_line",
        PlantCommand::StartLine => "start_line",
        PlantCommand::Maintenance => "maintenance",
        PlantCommand::TakeOrder { .. } => "take_order",
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
        let targets: Vec<&OpcUaTargets> = self.links.iter().map(|l| &l.targets).collect();
        let plan = plan(&targets, &self.safe, &c.command).map_err(|(t, m)| send_err(t, m))?;
        // The core is synchronous; the sessions are async. Block this worker only (the
        // runtime keeps the sessions' event loops on the others).
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|e| send_err("opcua".into(), e.to_string()))?;
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return Err(send_err(
                "opcua".into(),
                "OPC UA actuation needs the multi-threaded runtime".into(),
            ));
        }
        let several = self.links.len() > 1;
        let mut asked = Vec::new();
        let mut done = Vec::new();
        let mut failed = Vec::new();
        // Every server in the plan is asked, even after one fails: a line stop must reach
        // all the servers it can.
        for (i, action) in plan {
            let Some(link) = self.links.get_mut(i) else {
                continue;
            };
            let conn = &mut link.conn;
            let (what, result) = match action {
                UaAction::Write(writes) => {
                    let what = if writes.len() == 1 {
                        writes
                            .first()
                            .map(|(n, _)| n.to_string())
                            .unwrap_or_default()
                    } else {
                        "safe state".to_string()
                    };
                    let r = tokio::task::block_in_place(|| {
                        handle.block_on(async {
                            for (node, v) in &writes {
                                conn.write(node, *v).await?;
                            }
                            Ok::<(), opcua_link::UaError>(())
                        })
                    });
                    (what, r)
                }
                UaAction::Call(object, method) => {
                    let r = tokio::task::block_in_place(|| {
                        handle.block_on(conn.call(&object, &method, &[]))
                    });
                    (method.to_string(), r)
                }
            };
            let what = if several {
                format!("{}: {what}", link.source)
            } else {
                what
            };
            asked.push(what.clone());
            match result {
                Ok(()) => done.push(what),
                Err(e) => failed.push(format!("{what}: {e}")),
            }
        }
        if !failed.is_empty() {
            let message = if done.is_empty() {
                failed.join("; ")
            } else {
                format!("{} (done: {})", failed.join("; "), done.join(", "))
            };
            return Err(send_err(asked.join(", "), message));
        }
        self.seq += 1;
        Ok(Sent::of(&approved, done.join(", "), self.seq))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;
    use opcua_link::NodeRef;

    fn id(s: &str) -> NodeRef {
        NodeRef::Id(s.into())
    }

    #[test]
    fn commands_go_to_the_servers_configured_for_them() {
        // The filler PLC has a stop method; the pump PLC only its setpoint.
        let mut filler = OpcUaTargets::default();
        filler.calls.insert(
            "stop_line".into(),
            (id("ns=2;s=line1"), id("ns=2;s=line1.StopLine")),
        );
        let mut pumps = OpcUaTargets::default();
        pumps
            .setpoints
            .insert("pump.speed_sp".into(), id("ns=3;s=sp"));
        let safe = std::collections::BTreeMap::from([("pump.speed_sp".to_string(), 0.0)]);
        let targets = [&filler, &pumps];

        let set = PlantCommand::SetSetpoint {
            setpoint: "pump.speed_sp".into(),
            value: 1500.0,
        };
        assert_eq!(
            plan(&targets, &safe, &set).unwrap(),
            vec![(1, UaAction::Write(vec![(id("ns=3;s=sp"), 1500.0)]))]
        );
        // A stop: the method where there is one, the safe values where there is none.
        assert_eq!(
            plan(&targets, &safe, &PlantCommand::StopLine).unwrap(),
            vec![
                (
                    0,
                    UaAction::Call(id("ns=2;s=line1"), id("ns=2;s=line1.StopLine"))
                ),
                (1, UaAction::Write(vec![(id("ns=3;s=sp"), 0.0)])),
            ]
        );
        // Nothing configured: an error that says so.
        let (what, why) = plan(&targets, &safe, &PlantCommand::Maintenance).unwrap_err();
        assert_eq!(what, "maintenance");
        assert!(why.contains("no OPC UA method"), "{why}");
        let other = PlantCommand::SetSetpoint {
            setpoint: "tank.level_sp".into(),
            value: 1.0,
        };
        let (what, _) = plan(&targets, &safe, &other).unwrap_err();
        assert_eq!(what, "tank.level_sp");
    }
}
