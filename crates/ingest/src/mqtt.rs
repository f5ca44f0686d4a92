//! The MQTT source: subscribes to telemetry topics and hands raw frames to the caller.
//!
//! Works with the embedded broker and with any external MQTT 3.1.1 broker. The channel to
//! the caller is bounded: when the pipeline is busy the source waits, and the broker's
//! QoS 1 flow control pushes back on the publishers instead of memory growing.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// A frame as it arrived.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Broker address and credentials.
#[derive(Debug, Clone)]
pub struct BrokerEndpoint {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl BrokerEndpoint {
    pub fn options(&self, client_id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, self.host.clone(), self.port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(
            frames::MAX_ENVELOPE_BYTES + 1024,
            frames::MAX_ENVELOPE_BYTES + 1024,
        );
        o.set_clean_session(true);
        if let (Some(u), Some(p)) = (&self.username, &self.password) {
            o.set_credentials(u.clone(), p.clone());
        }
        o
    }
}

/// Connects, subscribes to `filters` with QoS 1 and forwards every publish to `tx` until
/// `tx` is closed. Connection errors are retried with backoff and reported through
/// `on_error`. `ready` fires once the first subscription is acknowledged.
pub async fn run_subscriber(
    endpoint: BrokerEndpoint,
    client_id: String,
    filters: Vec<String>,
    tx: mpsc::Sender<RawFrame>,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let (client, mut eventloop) = AsyncClient::new(endpoint.options(&client_id), 256);
    let mut ready = ready;
    let mut backoff = Duration::from_millis(100);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(100);
                for f in &filters {
                    if let Err(e) = client.subscribe(f.clone(), QoS::AtLeastOnce).await {
                        tracing::warn!(filter = %f, error = %e, "subscribe failed");
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let frame = RawFrame {
                    topic: p.topic.clone(),
                    payload: p.payload.to_vec(),
                };
                if tx.send(frame).await.is_err() {
                    let _ = client.disconnect().await;
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                if tx.is_closed() {
                    return;
                }
                tracing::warn!(client = %client_id, error = %e, "mqtt connection error, retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
