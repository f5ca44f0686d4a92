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
        Ok(Sent {
            command_id: c.id.clone(),
            topic,
            seq: self.seq,
            asset: c.asset.clone(),
            command: c.command.clone(),
            origin: c.origin.clone(),
            approved_by: c.approved_by.clone(),
        })
    }
}
